"""benchmarks/detection.py's "shipped calibration" rows score the cached features with the calibration on
disk, so that after a refit they never pair today's thresholds with scores from the calibration in use at
extraction time. The premise, checked on the real tiny.en guard: those recomputed scores are the ones a
request gets."""
from __future__ import annotations

import sys

import numpy as np
from conftest import LONG, ROOT

from guard.results import RequestOptions

sys.path.insert(0, str(ROOT / "benchmarks"))
import detection  # noqa: E402


def test_recomputed_scores_are_what_a_request_gets(guard, load_audio):
    result = guard.transcribe(load_audio(LONG), RequestOptions(return_features=True))
    served = np.array([s.score for s in result.segments])
    assert len(served) >= 2 and np.ptp(served) > 0.05  # speech then music: scores that differ
    stale = [{"features": s.features, "score": 0.5} for s in result.segments]  # a cache from another calibration
    scores, thresholds = detection.shipped_scores("tiny.en", stale)
    np.testing.assert_allclose(scores, served, atol=1e-12)
    assert thresholds == guard.bundle(None).calibration.thresholds
    empty, _ = detection.shipped_scores("tiny.en", [])
    assert empty.shape == (0,)

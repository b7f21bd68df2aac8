"""The blend study's own pieces (benchmarks/ensemble_study.py): the repetition features it derives from
cached rows, the logit blend, and the grouped bootstrap of differences from the baseline."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import ensemble_study as study  # noqa: E402


def test_repetition_against_speech_marks_the_copy_over_silence():
    """Whisper's "Deactivated." over 18 s of silence, then again over the word: the first copy's twin sits
    on far more speech; a partial repeat counts, an unrelated segment and a lone copy do not."""
    words = [["deactivated"], ["deactivated"], ["then", "press", "pound"], ["press", "pound"], ["goodbye"]]
    share = [0.01, 0.9, 0.05, 0.8, float("nan")]
    f = study.repetition_features(words, share)
    assert f[0] == {"window.text.word_repeat": 1.0, "window.text.repeat_speech_deficit": pytest.approx(0.89)}
    assert f[1]["window.text.repeat_speech_deficit"] == 0.0  # the grounded copy
    assert f[2]["window.text.word_repeat"] == pytest.approx(2 / 3)  # "press pound" repeats 2 of its 3 words
    assert f[2]["window.text.repeat_speech_deficit"] == pytest.approx(0.75)
    assert f[3]["window.text.word_repeat"] == 1.0 and f[3]["window.text.repeat_speech_deficit"] == 0.0
    assert f[4] == {"window.text.word_repeat": 0.0, "window.text.repeat_speech_deficit": 0.0}
    assert study.repetition_features([[], ["a"]], [0.0, 1.0])[0]["window.text.word_repeat"] == 0.0


def test_add_repetition_works_per_window_in_time_order():
    rows = [{"id": "c", "window": 0, "start": 18.8, "end": 20.0, "text": "Deactivated.",
             "features": {"vad.segment_share": 0.9}},
            {"id": "c", "window": 0, "start": 0.0, "end": 18.8, "text": "Deactivated.",
             "features": {"vad.segment_share": 0.0}},
            {"id": "c", "window": 1, "start": 30.0, "end": 31.0, "text": "Deactivated.",
             "features": {"vad.segment_share": 1.0}}]  # another window: not compared
    names = study.add_repetition(rows)
    assert names == ["window.text.repeat_speech_deficit", "window.text.word_repeat"]
    assert rows[1]["features"]["window.text.repeat_speech_deficit"] == pytest.approx(0.9)
    assert rows[0]["features"]["window.text.repeat_speech_deficit"] == 0.0
    assert rows[2]["features"]["window.text.word_repeat"] == 0.0


def test_blend_ends_are_the_two_models_and_the_middle_averages_logits():
    p_lr, p_trees = np.array([0.1, 0.5, 0.99]), np.array([0.9, 0.2, 0.5])
    np.testing.assert_allclose(study.blend(1.0, p_lr, p_trees), p_lr)
    np.testing.assert_allclose(study.blend(0.0, p_lr, p_trees), p_trees)
    mid = study.blend(0.5, p_lr, p_trees)
    np.testing.assert_allclose(study.logit(mid), (study.logit(p_lr) + study.logit(p_trees)) / 2, atol=1e-12)


def test_bootstrap_intervals_and_paired_differences():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 60)
    group = np.repeat(np.arange(30), 4)
    perfect = y + 0.01 * rng.random(len(y))
    noisy = y + rng.normal(0, 0.8, len(y))
    out = study.bootstrap(y, {"perfect": perfect, "noisy": noisy}, {"perfect": 0.5, "noisy": 0.5}, group, "noisy")
    assert out["perfect"]["auroc_95"] == [1.0, 1.0] and out["perfect"]["tpr1_95"] == [1.0, 1.0]
    assert out["noisy"]["auroc_diff_95"] == [0.0, 0.0]  # paired against itself
    assert out["perfect"]["auroc_diff_95"][0] > 0 and out["perfect"]["tpr1_diff_share_above_0"] > 0.95
    assert out["perfect"]["false_flags_95"] == [0.0, 0.0] and out["noisy"]["false_flags_95"][1] > 0

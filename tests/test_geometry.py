"""Encoder geometry, intrinsic dimension and window context on inputs whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from guard.geometry import encoder_features, participation_ratio, participation_ratios, window_context_features

rng = np.random.default_rng(1)


def test_rows_on_a_line_have_participation_ratio_one():
    direction = rng.normal(size=64)
    x = np.outer(rng.normal(size=30), direction) + rng.normal(size=64)  # a line, offset from the origin
    assert participation_ratio(x) == pytest.approx(1.0, abs=1e-6)


def test_isotropic_rows_fill_their_dimensions():
    k = 5
    basis = np.linalg.qr(rng.normal(size=(64, k)))[0].T  # k orthonormal directions
    x = np.vstack([basis, -basis]) * 3.0  # equal variance along each of the k directions
    assert participation_ratio(x) == pytest.approx(k, rel=1e-6)
    assert participation_ratio(x[:1]) == 0.0
    assert participation_ratio(np.ones((6, 8))) == 0.0


def test_more_directions_more_dimension():
    low = rng.normal(size=(40, 2)) @ rng.normal(size=(2, 50))
    high = rng.normal(size=(40, 20)) @ rng.normal(size=(20, 50))
    assert participation_ratio(low) < participation_ratio(high)


def test_encoder_features_see_padding_and_the_window():
    d = 16
    speech = rng.normal(size=(1000, d)) + 3.0
    pad = np.tile(rng.normal(size=d), (500, 1)) * 2
    enc = np.vstack([speech, pad]).astype(np.float32)
    on_speech = encoder_features(enc, 100, 300, n_frames=1000)
    past_end = encoder_features(enc, 1100, 1200, n_frames=1000)
    assert on_speech["encoder.output.segment.cos_window"] > 0.9
    assert past_end["encoder.output.segment.cos_padding"] == pytest.approx(1.0, abs=1e-5)
    assert past_end["encoder.output.segment.participation_ratio"] < 1e-3 or \
        past_end["encoder.output.segment.top1_share"] == 1.0  # identical frames: no spread
    assert on_speech["encoder.output.segment.participation_ratio"] > 5
    assert encoder_features(None, 0, 10, 10) == {}
    one = encoder_features(enc, 5, 5, n_frames=1000)  # an empty span reads one frame
    assert np.isfinite(list(one.values())).all()


def test_window_context_overlap_and_repetition():
    a = np.zeros(100)
    a[10:20] = 0.1
    b = np.zeros(100)
    b[60:70] = 0.1
    feats = window_context_features([a, a.copy(), b], [["thank", "you"], ["thank", "you"], ["press", "one", "now"]])
    assert feats[0]["window.align.overlap_prev"] == 0.0  # no neighbour before the first
    assert feats[0]["window.align.overlap_next"] == pytest.approx(1.0)
    assert feats[1]["window.align.overlap_next"] == 0.0  # disjoint attention
    assert feats[0]["window.text.duplicate"] == 1.0 and feats[2]["window.text.duplicate"] == 0.0
    assert feats[1]["window.text.ngram_repeat"] == 1.0 and feats[2]["window.text.ngram_repeat"] == 0.0
    assert window_context_features([a], [[]]) == [{"window.align.overlap_prev": 0.0, "window.align.overlap_next": 0.0,
                                                   "window.text.ngram_repeat": 0.0, "window.text.duplicate": 0.0}]


def test_batched_participation_ratio_matches_one_at_a_time():
    x = rng.normal(size=(4, 9, 32)) @ np.diag(np.linspace(0.1, 3, 32))
    np.testing.assert_allclose(participation_ratios(x), [participation_ratio(m) for m in x], rtol=1e-5)
    assert participation_ratios(x[:, :1]).tolist() == [0.0] * 4

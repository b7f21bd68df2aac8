"""The signature's maths on hand-built matrices whose answer is known in closed form."""
from __future__ import annotations

import numpy as np
import pytest

from guard.acoustic import FrameEvidence
from guard.probe.decoder_graph import out_name, pattern_name
from guard.probe.runner import ProbeCache
from guard.signature import (SegmentSlice, WindowContext, effective_rank, kirchhoff_index, segment_features,
                             singular_values, spectral_slope, stable_rank, top_share)

rng = np.random.default_rng(0)


def orthonormal(n: int, m: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(m, n)))
    return q[:, :n].T  # [n, m], orthonormal rows


def test_singular_values_match_numpy_svd():
    x = rng.normal(size=(3, 7, 40))
    np.testing.assert_allclose(singular_values(x), np.linalg.svd(x, compute_uv=False), rtol=1e-6, atol=1e-8)


def test_rank_one_map_has_effective_rank_one():
    attention = np.outer(np.ones(12), rng.dirichlet(np.ones(300)))  # every token attends the same way
    s = singular_values(attention)
    assert effective_rank(s) == pytest.approx(1.0, abs=1e-4)
    assert stable_rank(s) == pytest.approx(1.0, abs=1e-6)
    assert top_share(s) == pytest.approx(1.0, abs=1e-9)


def test_uniform_over_frames_is_rank_one_too():
    attention = np.full((8, 100), 1 / 100)
    assert effective_rank(singular_values(attention)) == pytest.approx(1.0, abs=1e-4)


def test_flat_spectrum_map_has_maximal_effective_rank():
    n = 10
    attention = np.zeros((n, 200))
    attention[np.arange(n), rng.choice(200, n, replace=False)] = 1.0  # each token on its own frame
    s = singular_values(attention)
    assert effective_rank(s) == pytest.approx(n, rel=1e-6)
    assert stable_rank(s) == pytest.approx(n, rel=1e-6)
    assert top_share(s) == pytest.approx(1 / n, rel=1e-6)
    assert spectral_slope(s) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.3])
def test_known_power_law_gives_known_slope(alpha):
    n = 30
    sv = np.arange(1, n + 1, dtype=float) ** -alpha
    x = orthonormal(n, n).T @ np.diag(sv) @ orthonormal(n, 500)
    assert spectral_slope(singular_values(x)) == pytest.approx(alpha, abs=1e-6)


def test_slope_uses_only_the_top_modes():
    n = 80
    sv = np.concatenate([np.arange(1, 51, dtype=float) ** -1.5, np.full(30, 1e-3)])
    x = orthonormal(n, n).T @ np.diag(sv) @ orthonormal(n, 400)
    assert spectral_slope(singular_values(x), modes=50) == pytest.approx(1.5, abs=1e-6)


def test_effective_rank_is_between_one_and_n_and_orders_spectra():
    sharp = np.array([10.0, 1.0, 0.1, 0.01])
    flat = np.array([1.0, 0.9, 0.8, 0.7])
    assert 1.0 <= effective_rank(sharp) < effective_rank(flat) <= 4.0


def test_kirchhoff_index_of_a_complete_graph():
    n = 6
    x = np.ones((n, 16))  # identical rows: every cosine similarity is 1, the graph is K_n
    # Laplacian eigenvalues of K_n: n (n-1 times) -> Kf = n * (n-1)/n = n-1, normalised by n^2
    assert kirchhoff_index(x) == pytest.approx((n - 1) / n**2, rel=1e-9)


def test_kirchhoff_grows_when_the_graph_falls_apart():
    tight = np.ones((6, 8)) + 0.01 * rng.normal(size=(6, 8))
    loose = rng.normal(size=(6, 8))
    assert kirchhoff_index(loose) > kirchhoff_index(tight)


def _context(patterns: np.ndarray, n_frames: int, speech_frames: slice) -> WindowContext:
    layers, heads, tokens, frames = patterns.shape
    tensors = {}
    for l in range(layers):
        tensors[pattern_name(l)] = patterns[l].astype(np.float32)
        tensors[out_name(l)] = rng.normal(size=(tokens, 16)).astype(np.float32)
    speech = np.zeros(frames, np.float32)
    speech[speech_frames] = 0.9
    energy = np.where(speech > 0, -20.0, -80.0).astype(np.float32)
    ev = FrameEvidence(speech, energy, n_frames)
    zeros = np.zeros(tokens)
    return WindowContext(ProbeCache(tensors, layers, np.arange(tokens)), ev, np.array([[layers - 1, 0]]),
                         zeros - 0.1, zeros + 1.0, np.ones(tokens, bool))


def test_coupling_features_on_a_map_that_reads_the_speech_in_order():
    layers, heads, tokens, frames, n_frames = 2, 2, 10, 100, 60
    p = np.zeros((layers, heads, tokens, frames))
    for t in range(tokens):
        p[:, :, t, 10 + 3 * t] = 1.0  # a diagonal through frames 10..37, all speech
    ctx = _context(p, n_frames, slice(5, 45))
    f = segment_features(ctx, SegmentSlice(np.arange(tokens), 10, 40, 0, 1))
    assert f["decoder.layers.0.cross_attn.pattern.pad_mass"] == pytest.approx(0.0, abs=1e-6)
    assert f["decoder.layers.1.cross_attn.pattern.nonspeech_mass"] == pytest.approx(0.0, abs=1e-6)
    assert f["align.peak_forward"] == 1.0
    assert f["align.peak_in_span"] == 1.0
    assert f["decoder.layers.0.cross_attn.pattern.eff_rank"] == pytest.approx(tokens, rel=1e-4)


def test_coupling_features_on_a_detached_map():
    layers, heads, tokens, frames, n_frames = 2, 2, 10, 100, 60
    p = np.zeros((layers, heads, tokens, frames))
    p[:, :, :, 80] = 0.7  # most of the mass on padding beyond the audio
    p[:, :, :, 55] = 0.3  # the rest on one frame without speech
    ctx = _context(p, n_frames, slice(5, 45))
    f = segment_features(ctx, SegmentSlice(np.arange(tokens), 10, 20, 0, 1))  # span + margin ends at 45
    assert f["decoder.layers.0.cross_attn.pattern.pad_mass"] == pytest.approx(0.7, abs=1e-6)
    assert f["decoder.layers.0.cross_attn.pattern.nonspeech_mass"] == pytest.approx(1.0, abs=1e-6)
    assert f["decoder.layers.0.cross_attn.pattern.eff_rank"] == pytest.approx(1.0, abs=1e-4)
    assert f["align.peak_in_span"] == 0.0
    assert f["align.peak_speech"] == 0.0


def test_top_right_vectors_match_svd_up_to_sign():
    from guard.signature import top_right_vectors

    x = rng.normal(size=(3, 9, 200))
    v = top_right_vectors(x)
    ref = np.linalg.svd(x)[2][:, 0, :]
    np.testing.assert_allclose(np.abs(np.sum(v * ref, -1)), 1.0, atol=1e-8)

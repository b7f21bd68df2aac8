"""Signature features beyond the cross-attention spectra (issue 10, item 3).

- encoder output geometry over a segment's own frames (the encoder runs once per window; this
  only reads its output): spectrum of the centred frames, mean norm, similarity to the window's
  real audio and to the padding the encoder saw past the end of the audio;
- intrinsic dimension (participation ratio of the centred rows) of a per-token decoder tensor;
- window context: does a segment's attention overlap its neighbours' in the same window, is its
  text repeated elsewhere in the window.

Names say which tensor a feature was read from (`encoder.output.segment.participation_ratio`).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-12
MAX_FRAMES = 128  # frames of a long segment are subsampled to this many for the spectrum


def _centred_gram(x: np.ndarray) -> np.ndarray:
    """Gram matrix of the centred rows, on the smaller side (same non-zero eigenvalues)."""
    x = x.astype(np.float32) - x.mean(0, keepdims=True, dtype=np.float32)
    g = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return g.astype(np.float64)


def _pr(g: np.ndarray) -> float:
    # sum(lambda) = trace, sum(lambda^2) = squared Frobenius norm: no eigendecomposition needed
    s2 = float(np.sum(g * g))
    return float(np.trace(g) ** 2 / s2) if s2 > EPS else 0.0


def _top_eig(g: np.ndarray, steps: int = 30) -> float:
    """Largest eigenvalue of a PSD matrix by power iteration (from a fixed start: deterministic)."""
    v = np.ones(g.shape[0]) / np.sqrt(g.shape[0])
    lam = 0.0
    for _ in range(steps):
        w = g @ v
        lam = float(np.linalg.norm(w))
        if lam <= EPS:
            return 0.0
        v = w / lam
    return float(v @ g @ v)


def participation_ratio(x: np.ndarray) -> float:
    """(sum lambda)^2 / sum lambda^2 of the centred rows' covariance: a linear intrinsic dimension.

    1 for rows on a line, n-1 at most for n rows; 0 for fewer than 2 rows or identical rows."""
    if x.shape[0] < 2:
        return 0.0
    return _pr(_centred_gram(x))


def participation_ratios(x: np.ndarray) -> np.ndarray:
    """`participation_ratio` of each [n, d] matrix in x [..., n, d] at once (via the n x n Gram)."""
    if x.shape[-2] < 2:
        return np.zeros(x.shape[:-2])
    c = x.astype(np.float32) - x.mean(-2, keepdims=True, dtype=np.float32)
    g = (c @ np.swapaxes(c, -1, -2)).astype(np.float64)
    s2 = np.sum(g * g, axis=(-1, -2))
    tr = np.trace(g, axis1=-2, axis2=-1)
    return np.where(s2 > EPS, tr**2 / np.maximum(s2, EPS), 0.0)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), EPS))


def encoder_features(encoder_output: np.ndarray | None, frame_lo: int, frame_hi: int,
                     n_frames: int) -> dict[str, float]:
    """Geometry of the encoder output [1500, d] over the segment's frames [frame_lo, frame_hi)."""
    if encoder_output is None:
        return {}
    total = encoder_output.shape[0]
    n_real = int(np.clip(n_frames, 1, total))
    lo = int(np.clip(frame_lo, 0, total - 1))
    hi = int(np.clip(max(frame_hi, lo + 1), lo + 1, total))
    seg = encoder_output[lo:hi]
    if len(seg) > MAX_FRAMES:
        seg = seg[np.linspace(0, len(seg) - 1, MAX_FRAMES).astype(int)]
    norms = np.linalg.norm(seg, axis=-1)
    mean = seg.mean(0)
    window_mean = encoder_output[:n_real].mean(0)
    g = _centred_gram(seg) if len(seg) > 1 else np.zeros((1, 1))
    f = {
        "encoder.output.segment.participation_ratio": _pr(g),
        "encoder.output.segment.norm_mean": float(norms.mean()),
        "encoder.output.segment.norm_cv": float(norms.std() / max(norms.mean(), EPS)),
        "encoder.output.segment.cos_window": _cos(mean, window_mean),
        "encoder.output.segment.frame_cos": float(np.mean(np.sum(seg[1:] * seg[:-1], -1) /
                                                          np.maximum(norms[1:] * norms[:-1], EPS)))
        if len(seg) > 1 else 1.0,
    }
    if n_real < total:  # padding frames the encoder saw: what "no audio" looks like in this window
        pad = encoder_output[n_real:total:max(1, (total - n_real) // 64)].mean(0)
        f["encoder.output.segment.cos_padding"] = _cos(mean, pad)
    else:
        f["encoder.output.segment.cos_padding"] = 0.0
    total_var = float(np.trace(g))
    f["encoder.output.segment.top1_share"] = _top_eig(g) / total_var if total_var > EPS else 1.0
    return f


def _ngrams(words: list[str], n: int = 3) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def window_context_features(attention: list[np.ndarray], words: list[list[str]]) -> list[dict[str, float]]:
    """Per segment of one window: overlap of its alignment-head attention (a distribution over
    frames) with its neighbours', and repetition of its text elsewhere in the window."""
    n = len(attention)
    grams = [_ngrams(w) for w in words]
    joined = [" ".join(w) for w in words]
    out = []
    for i in range(n):
        f = {}
        for name, j in (("prev", i - 1), ("next", i + 1)):
            f[f"window.align.overlap_{name}"] = (float(np.minimum(attention[i], attention[j]).sum())
                                                 if 0 <= j < n else 0.0)
        others = [j for j in range(n) if j != i]
        if grams[i] and others:
            shared = max(len(grams[i] & grams[j]) for j in others)
            f["window.text.ngram_repeat"] = shared / len(grams[i])
        else:
            f["window.text.ngram_repeat"] = 0.0
        f["window.text.duplicate"] = float(bool(joined[i]) and any(joined[j] == joined[i] for j in others))
        out.append(f)
    return out

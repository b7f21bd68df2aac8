"""The low-rank spectral signature of a segment, read from one teacher-forced window pass.

For a segment (its token rows, its window's real audio frames) this computes, per decoder layer:
the singular-value spectrum of the cross-attention maps (per head) and of the cross-attention
sublayer outputs, through the small Gram matrix (tokens x tokens), giving effective rank, stable
rank, top-mode energy share and the power-law slope of the spectrum; depth trends (rank
compression and slope hardening from layer to layer, a gain/alignment proxy from consecutive
layers' top singular vectors); and acoustic coupling (attention entropy, mass on padding, on
frames without speech, inside the segment's own time span, the advance of the alignment heads'
attention peak). Confidence features ride along so the score never knows less than they do.

Every feature name says which tensor it came from (`decoder.layers.2.cross_attn.pattern.eff_rank`).
Everything is vectorised over layers, heads and rows; nothing loops over frames.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from guard.acoustic import FrameEvidence
from guard.geometry import participation_ratios
from guard.probe.decoder_graph import out_name, pattern_name
from guard.probe.runner import ProbeCache

EPS = 1e-12
SLOPE_MODES = 50  # spectral slope is fitted over at most the top 50 modes (as in the literature)
SPAN_MARGIN_FRAMES = 25  # 0.5 s either side of a segment's own time span


# ---------------------------------------------------------------- spectra
def singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of the last two axes [..., n, m], via the n x n Gram matrix, descending."""
    gram = x @ np.swapaxes(x, -1, -2)
    eig = np.linalg.eigvalsh(gram.astype(np.float64))
    return np.sqrt(np.clip(eig[..., ::-1], 0.0, None))


def effective_rank(s: np.ndarray) -> np.ndarray:
    """Entropy effective rank exp(H(p)) with p_i = s_i / sum(s) (Roy & Vetterli)."""
    p = s / np.maximum(s.sum(-1, keepdims=True), EPS)
    h = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, EPS)), 0.0), axis=-1)
    return np.exp(h)


def stable_rank(s: np.ndarray) -> np.ndarray:
    """||X||_F^2 / ||X||_2^2."""
    return np.sum(s**2, -1) / np.maximum(s[..., 0] ** 2, EPS)


def top_share(s: np.ndarray) -> np.ndarray:
    """Energy share of the top mode: s_1^2 / sum s_i^2."""
    return s[..., 0] ** 2 / np.maximum(np.sum(s**2, -1), EPS)


def spectral_slope(s: np.ndarray, modes: int = SLOPE_MODES) -> np.ndarray:
    """alpha in s_i ~ i^-alpha: minus the least-squares slope of log s_i on log i over the top modes.

    Modes below 1e-6 of the top one are left out (numerically zero); fewer than 2 modes give 0.
    """
    k = min(modes, s.shape[-1])
    if k < 2:
        return np.zeros(s.shape[:-1])
    top = s[..., :k]
    valid = top > np.maximum(top[..., :1], EPS) * 1e-6
    x = np.log(np.arange(1, k + 1, dtype=np.float64))
    y = np.log(np.maximum(top, EPS))
    w = valid.astype(np.float64)
    n = w.sum(-1)
    mx = (w * x).sum(-1) / np.maximum(n, 1)
    my = (w * y).sum(-1) / np.maximum(n, 1)
    cov = (w * (x - mx[..., None]) * (y - my[..., None])).sum(-1)
    var = (w * (x - mx[..., None]) ** 2).sum(-1)
    slope = np.where((n >= 2) & (var > 0), cov / np.maximum(var, EPS), 0.0)
    return -slope


def kirchhoff_index(x: np.ndarray) -> np.ndarray:
    """Kf = n * sum 1/lambda over the non-zero Laplacian eigenvalues of the rows' cosine-similarity graph.

    x is [..., n, d]; edge weights are cosine similarities clipped at 0. Normalised by n^2 so
    segments of different lengths compare (a complete unit graph gives 1/n * (n-1)/n ~ 1/n).
    """
    n = x.shape[-2]
    if n < 2:
        return np.zeros(x.shape[:-2])
    unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)
    w = np.clip(unit @ np.swapaxes(unit, -1, -2), 0.0, None)
    w = w * (1 - np.eye(n))
    lap = np.eye(n) * w.sum(-1)[..., None] - w
    lam = np.linalg.eigvalsh(lap.astype(np.float64))
    inv = np.where(lam > 1e-9, 1.0 / np.maximum(lam, 1e-9), 0.0)
    return n * inv.sum(-1) / n**2


def spectrum_features(s: np.ndarray) -> dict[str, np.ndarray]:
    n = s.shape[-1]
    er = effective_rank(s)
    return {"eff_rank": er, "eff_rank_frac": er / n, "stable_rank": stable_rank(s), "top1_share": top_share(s),
            "slope": spectral_slope(s)}


def _trend(values: np.ndarray) -> float:
    """Least-squares slope of a per-layer quantity against layer index (compression < 0)."""
    layers = np.arange(len(values), dtype=np.float64)
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(layers, values, 1)[0])


# ---------------------------------------------------------------- segment input
@dataclass
class SegmentSlice:
    """Where a segment sits in its window's teacher-forced pass."""

    rows: np.ndarray  # input positions that predict the segment's text tokens
    frame_lo: int  # encoder frames of the segment's time span, relative to the window
    frame_hi: int
    index_in_window: int
    n_in_window: int
    alignment: np.ndarray | None = None  # set by segment_features: the alignment heads' attention over frames


@dataclass
class WindowContext:
    """Per-window inputs shared by its segments."""

    cache: ProbeCache
    evidence: FrameEvidence
    alignment_heads: np.ndarray  # [k, 2] (layer, head) pairs that track time
    token_logprob: np.ndarray  # by input position (nan where not scored)
    token_entropy: np.ndarray
    token_argmax_ok: np.ndarray
    encoder_output: np.ndarray | None = None  # [1500, d] of the window (geometry features)


# ---------------------------------------------------------------- the signature
def segment_features(ctx: WindowContext, seg: SegmentSlice) -> dict[str, float]:
    rows = seg.rows
    n_rows = len(rows)
    n_frames = max(1, ctx.evidence.n_frames)
    patterns, outs = ctx.cache.select(rows)  # [L, H, n, F], [L, n, d]
    if np.may_share_memory(patterns, ctx.cache.stacked_patterns):  # normalised in place below
        patterns = patterns.copy()
    n_layers, n_heads = patterns.shape[:2]
    content = patterns[..., :n_frames]
    content_mass = content.sum(-1)  # [L, H, n]
    pad_mass = 1.0 - content_mass
    # in place, and the element-wise products below one layer at a time in one scratch array: a
    # long segment's [L, H, n, F] float32 is ~20-30 MB, and four of them were alive at once
    norm = np.divide(content, np.maximum(content_mass[..., None], EPS), out=content)
    f: dict[str, float] = {}

    # spectra of the attention maps (per head, then averaged) and of the sublayer outputs
    att = spectrum_features(singular_values(norm))  # each [L, H]
    act_s = singular_values(outs)  # [L, n]
    act = spectrum_features(act_s)
    kf = kirchhoff_index(outs)  # [L]
    speech = ctx.evidence.speech()[:n_frames]
    lo = max(0, seg.frame_lo - SPAN_MARGIN_FRAMES)
    hi = min(n_frames, seg.frame_hi + SPAN_MARGIN_FRAMES)
    plogp = np.empty(norm.shape[:-1], norm.dtype)  # sum of p log p, [L, H, n]
    nonspeech_mass = np.empty(norm.shape[:-1], norm.dtype)  # [L, H, n]
    scratch, nonspeech = np.empty(norm.shape[1:], norm.dtype), ~speech
    for l in range(n_layers):  # per-row sums: the same values as over all layers at once
        np.log(np.maximum(norm[l], EPS), out=scratch)  # not in place: numpy's SIMD log skips overlapping arrays
        plogp[l] = np.sum(np.multiply(norm[l], scratch, out=scratch), -1)
        nonspeech_mass[l] = np.multiply(norm[l], nonspeech, out=scratch).sum(-1)
    del scratch
    entropy = -plogp / np.log(max(n_frames, 2))  # [L, H, n]
    span_mass = norm[..., lo:hi].sum(-1) if hi > lo else np.zeros_like(content_mass)
    per_head = {"eff_rank_frac": att["eff_rank_frac"].tolist(), "slope": att["slope"].tolist(),  # [L][H] floats
                "entropy": entropy.mean(-1).tolist(), "nonspeech_mass": nonspeech_mass.mean(-1).tolist(),
                "span_mass": span_mass.mean(-1).tolist()}
    pr_outs = participation_ratios(outs).tolist()  # intrinsic dimension of each layer's rows
    for l in range(n_layers):
        pre_a, pre_o = pattern_name(l), out_name(l)
        for key, value in att.items():
            f[f"{pre_a}.{key}"] = float(value[l].mean())
        f[f"{pre_a}.eff_rank_frac.min_head"] = float(att["eff_rank_frac"][l].min())
        f[f"{pre_a}.entropy"] = float(entropy[l].mean())
        f[f"{pre_a}.pad_mass"] = float(pad_mass[l].mean())
        f[f"{pre_a}.nonspeech_mass"] = float(nonspeech_mass[l].mean())
        f[f"{pre_a}.span_mass"] = float(span_mass[l].mean())
        for key, value in act.items():
            f[f"{pre_o}.{key}"] = float(value[l])
        f[f"{pre_o}.kirchhoff"] = float(kf[l])
        f[f"{pre_o}.participation_ratio"] = pr_outs[l]
        for h in range(n_heads):  # per head: the fit selects the heads that carry signal
            pre_h = f"{pre_a}.heads.{h}"
            for key, values in per_head.items():
                f[f"{pre_h}.{key}"] = values[l][h]

    # depth trends: compression and hardening across layers, gain and alignment of top modes
    er_att = att["eff_rank_frac"].mean(1)
    f["depth.cross_attn.pattern.eff_rank_trend"] = _trend(er_att)
    f["depth.cross_attn.pattern.slope_trend"] = _trend(att["slope"].mean(1))
    f["depth.cross_attn.out.eff_rank_trend"] = _trend(act["eff_rank_frac"])
    f["depth.cross_attn.out.slope_trend"] = _trend(act["slope"])
    f["depth.cross_attn.out.gain"] = float(np.mean(np.log(np.maximum(act_s[1:, 0], EPS) /
                                                          np.maximum(act_s[:-1, 0], EPS)))) if n_layers > 1 else 0.0
    f["depth.cross_attn.out.alignment"] = _top_mode_alignment(outs)
    f["depth.cross_attn.pattern.alignment"] = _top_mode_alignment(norm.mean(1))

    # alignment heads: where the decoder looks while writing each token
    heads = ctx.alignment_heads
    align = norm[heads[:, 0], heads[:, 1]].mean(0) if len(heads) else norm[-1].mean(0)  # [n, F]
    mean_align = align.mean(0) if len(align) else np.zeros(n_frames)
    seg.alignment = mean_align / max(float(mean_align.sum()), EPS)
    peaks = align.argmax(-1)
    steps = np.diff(peaks)
    span = max(1, seg.frame_hi - seg.frame_lo)
    f["align.peak_forward"] = float((steps >= 0).mean()) if len(steps) else 1.0
    f["align.peak_backjump"] = float((steps < -2).mean()) if len(steps) else 0.0
    f["align.peak_cover"] = float((peaks.max() - peaks.min()) / span) if n_rows else 0.0
    f["align.peak_in_span"] = float(((peaks >= lo) & (peaks < hi)).mean())
    f["align.peak_speech"] = float(ctx.evidence.speech_prob[peaks].mean())
    f["align.peak_energy_db"] = float(ctx.evidence.energy_db[peaks].mean())
    f["align.concentration"] = float(align.max(-1).mean())

    # the decoder's own confidence on these tokens (teacher-forced)
    lp, ent, ok = ctx.token_logprob[rows], ctx.token_entropy[rows], ctx.token_argmax_ok[rows]
    f["tok.logprob_mean"] = float(np.mean(lp))
    f["tok.logprob_min"] = float(np.min(lp))
    f["tok.logprob_std"] = float(np.std(lp))
    f["tok.entropy_mean"] = float(np.mean(ent))
    f["tok.entropy_max"] = float(np.max(ent))
    f["tok.argmax_agree"] = float(np.mean(ok))

    # acoustic evidence under the segment and its window
    seg_speech = ctx.evidence.speech_prob[seg.frame_lo:max(seg.frame_hi, seg.frame_lo + 1)]
    seg_energy = ctx.evidence.energy_db[seg.frame_lo:max(seg.frame_hi, seg.frame_lo + 1)]
    f["vad.segment_share"] = float((seg_speech >= 0.5).mean()) if len(seg_speech) else 0.0
    f["vad.segment_prob"] = float(seg_speech.mean()) if len(seg_speech) else 0.0
    f["vad.window_share"] = float(speech.mean())
    f["energy.segment_db"] = float(seg_energy.mean()) if len(seg_energy) else -100.0
    f["energy.segment_p90_db"] = float(np.percentile(seg_energy, 90)) if len(seg_energy) else -100.0
    f["energy.window_p90_db"] = float(np.percentile(ctx.evidence.energy_db[:n_frames], 90))
    f["seg.n_tokens"] = float(n_rows)
    f["seg.index_in_window"] = float(seg.index_in_window)
    f["seg.n_in_window"] = float(seg.n_in_window)
    return f


def top_right_vectors(x: np.ndarray) -> np.ndarray:
    """Top right singular vector of each [n, m] matrix in x [..., n, m], via the n x n Gram matrix."""
    gram = (x @ np.swapaxes(x, -1, -2)).astype(np.float64)
    w, u = np.linalg.eigh(gram)
    v = np.einsum("...nm,...n->...m", x.astype(np.float64), u[..., :, -1])
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), EPS)


def _top_mode_alignment(x: np.ndarray) -> float:
    """Mean |cos| between consecutive layers' top right singular vectors ([L, n, m] input)."""
    if x.shape[0] < 2 or x.shape[1] == 0:
        return 1.0
    top = top_right_vectors(x)
    return float(np.mean(np.abs(np.sum(top[1:] * top[:-1], -1))))


# ---------------------------------------------------------------- text-side features
_WORD = re.compile(r"[a-z0-9']+")


def normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower().replace("'", " ")))


def text_features(text: str, start: float, end: float, avg_logprob: float, no_speech_prob: float,
                  compression_ratio: float, temperature: float, phrases: frozenset[str]) -> dict[str, float]:
    words = normalise(text).split()
    duration = max(end - start, 1e-3)
    raw = text.strip().encode("utf-8")
    return {
        "conf.avg_logprob": float(avg_logprob),
        "conf.no_speech_prob": float(no_speech_prob),
        "conf.compression_ratio": float(compression_ratio),
        "conf.temperature": float(temperature),
        "seg.duration": float(duration),
        "seg.words": float(len(words)),
        "seg.words_per_second": len(words) / duration,
        "seg.chars_per_second": len(raw) / duration,
        "text.compression": len(raw) / max(1, len(zlib.compress(raw))) if raw else 0.0,
        "text.repeat_share": 1.0 - len(set(words)) / len(words) if words else 0.0,
        "text.boh": float(" ".join(words) in phrases),
    }

"""Words of a window from its probe pass: which rows to keep, timings, per-word features, scores.

`plan` says which rows of the teacher-forced pass the alignment reads (the start-of-transcript
rows, the rows that predict each text token and the end of text, the row after the last text
token); `align_window` turns those rows of the alignment heads into words (guard.alignment);
`word_features` reads, along each word's DTW path, what the attention, the audio and the decoder
say about it; the word calibration (guard/calibration/words-<model>.json) turns them into a score.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from guard import alignment
from guard.signature import EPS, WindowContext

_WORD = re.compile(r"[a-z0-9']+")
# what a word also knows about its segment: segment signature feature -> word feature name
SEGMENT_CONTEXT = {"conf.no_speech_prob": "seg.no_speech_prob", "conf.avg_logprob": "seg.avg_logprob",
                   "conf.compression_ratio": "seg.compression_ratio", "vad.segment_share": "seg.vad_share",
                   "text.repeat_share": "seg.repeat_share", "seg.words_per_second": "seg.words_per_second"}


# word features also given relative to the median of the segment's words: "this word is less
# grounded than its neighbours", which a segment holding real speech and an invented tail shows
RELATIVE = ("word.vad_prob", "word.attn_speech_mass", "word.logprob_mean", "word.path_vertical",
            "word.speech_distance_s", "word.duration", "word.path_cost", "word.energy_db")


def add_relative(rows: list[dict[str, float]]) -> None:
    """Add `<feature>.vs_segment` (value minus the segment's median) to each word row, in place."""
    if not rows:
        return
    for name in RELATIVE:
        values = np.array([r.get(name, np.nan) for r in rows], dtype=np.float64)
        median = float(np.nanmedian(values)) if np.isfinite(values).any() else 0.0
        for r, v in zip(rows, values):
            r[f"{name}.vs_segment"] = float(v - median)


def segment_context(segment_features: dict[str, float] | None) -> dict[str, float]:
    return {name: float(segment_features[f]) for f, name in SEGMENT_CONTEXT.items()
            if segment_features and f in segment_features}


@dataclass
class Plan:
    """Where a window's text tokens sit in its teacher-forced pass."""

    text_tokens: list[int]
    emitted: np.ndarray  # index in window.tokens of each text token
    predict_rows: np.ndarray  # input position predicting each text token (its probability)
    std_rows: np.ndarray  # every row the standardisation sees, in order
    matrix: slice  # the rows of std_rows that the DTW walks (text tokens + end of text)
    text_counts: list[int]  # text tokens per segment
    needs_position: int | None  # a position that must be fed (the row after the last text token)


def plan(prompt: list[int], tokens: list[int], spans: list[tuple[int, int]], sot_sequence: list[int],
         eot: int) -> Plan | None:
    """The rows the alignment reads for the segments at `spans` of `tokens` (None: no text)."""
    emitted, counts = [], []
    for lo, hi in spans:
        idx = [k for k in range(lo, hi) if tokens[k] < eot]
        emitted += idx
        counts.append(len(idx))
    if not emitted:
        return None
    emitted = np.array(emitted, dtype=np.int64)
    base = len(prompt)
    predict = base - 1 + emitted
    # The DTW rows are the rows that predict each text token (`align`'s row k predicts text token k),
    # then the last text token's own row (in `align` the row predicting end of text). Within a segment
    # the row predicting a token is also the previous token's own row, as in `align`. At a segment
    # boundary the row predicting the next segment's first word is the start timestamp's row: it
    # looks where that word begins, as `align`'s row does, while the previous text token's row here
    # predicts the end timestamp and looks at the end of the speech before the pause (measured:
    # benchmarks/words.py, 38 -> 32 of 638 tiny.en boundaries off by more than 40 ms).
    matrix_rows = np.concatenate([predict, [base + emitted[-1]]])
    sot = prompt.index(sot_sequence[0]) if sot_sequence and sot_sequence[0] in prompt else 0
    sot_rows = np.arange(sot, min(sot + len(sot_sequence), int(matrix_rows[0])), dtype=np.int64)
    after = int(matrix_rows[-1]) + 1  # the end-of-text token's own row in `align`
    std = np.concatenate([sot_rows, matrix_rows, [after]]).astype(np.int64)
    return Plan([tokens[k] for k in emitted], emitted, predict, std,
                slice(len(sot_rows), len(sot_rows) + len(matrix_rows)), counts, after)


@dataclass
class AlignedWindow:
    words: alignment.WindowAlignment
    path: alignment.Path
    matrix: np.ndarray  # [text tokens + 1, frames]
    content: np.ndarray  # [heads, text tokens, frames]: alignment heads' attention over real frames
    per_segment: list[list[alignment.WordTiming]]


def align_window(ctx: WindowContext, p: Plan, tokenizer, n_mel_frames: int, time_offset: float,
                 n_fed: int) -> AlignedWindow:
    heads = ctx.alignment_heads
    # a window that filled the decoder's positions has no row after its last token: reuse the last
    rows = np.minimum(p.std_rows if p.std_rows[-1] < n_fed else p.std_rows[:-1], n_fed - 1)
    patterns, _ = ctx.cache.select(rows)  # [L, H, R, F] only the kept rows
    head_patterns = patterns[heads[:, 0], heads[:, 1]]
    n_frames = max(1, n_mel_frames // 2)  # CTranslate2 halves num_frames: the encoder's stride
    matrix = alignment.alignment_matrix(head_patterns, n_frames, p.matrix)
    path = alignment.negative_dtw(matrix)
    probs = np.exp(ctx.token_logprob[p.predict_rows])
    words = alignment.word_timings(tokenizer, p.text_tokens, path, probs)
    own, _ = ctx.cache.select(p.predict_rows)
    content = alignment.content_softmax(own[heads[:, 0], heads[:, 1]], n_frames)
    return AlignedWindow(words, path, matrix, content, alignment.split_by_segment(words, p.text_counts, time_offset))


def normalised(word: str) -> str:
    return " ".join(_WORD.findall(word.lower().replace("'", " ")))


def word_features(ctx: WindowContext, p: Plan, aw: AlignedWindow, segment_scores: list[float],
                  segment_features: list[dict[str, float] | None] | None = None) -> list[list[dict]]:
    """Per segment, per word: features read along its DTW path (names say where each comes from)."""
    ev = ctx.evidence
    n_frames = aw.matrix.shape[1]
    speech = ev.speech()[:n_frames]
    speech_idx = np.flatnonzero(speech)
    mass_speech = (aw.content * speech).sum(-1).mean(0)  # [tokens]
    concentration = aw.content.max(-1).mean(0)
    lp = ctx.token_logprob[p.predict_rows]
    ent = ctx.token_entropy[p.predict_rows]
    ok = ctx.token_argmax_ok[p.predict_rows]
    window_p90 = float(np.percentile(ev.energy_db[:max(1, ev.n_frames)], 90))
    text_index, time_index = aw.path.text_index, aw.path.time_index
    step_cost = aw.matrix[text_index, time_index]
    vertical = np.concatenate([[False], (np.diff(time_index) == 0)])
    history: list[str] = []
    out = []
    n_seg = len(aw.per_segment)
    for s, words in enumerate(aw.per_segment):
        context = segment_context(segment_features[s] if segment_features else None)
        rows = []
        for k, w in enumerate(words):
            lo, hi = w.first, w.first + max(1, len(w.tokens))
            on_path = (text_index >= lo) & (text_index < hi)
            frames = time_index[on_path]
            f_lo = int(frames.min()) if len(frames) else 0
            f_hi = int(frames.max()) + 1 if len(frames) else 1
            norm = normalised(w.word)
            trigram = " ".join(history[-2:] + [norm])
            seen = " ".join(history)
            if len(speech_idx):
                inside = speech[f_lo:f_hi].any()
                gap = 0 if inside else min(abs(speech_idx - f_lo).min(), abs(speech_idx - (f_hi - 1)).min())
            else:
                gap = n_frames
            vad = ev.speech_prob[f_lo:f_hi]
            energy = ev.energy_db[f_lo:f_hi]
            rows.append({
                "word.n_tokens": float(hi - lo),
                "word.chars": float(len(w.word.strip())),
                "word.duration": float(max(w.end - w.start, 0.0)),
                "word.path_frames": float(f_hi - f_lo),
                "word.path_cost": float(step_cost[on_path].mean()) if on_path.any() else 0.0,
                "word.path_vertical": float(vertical[on_path].mean()) if on_path.any() else 0.0,
                "word.attn_speech_mass": float(mass_speech[lo:hi].mean()),
                "word.attn_concentration": float(concentration[lo:hi].mean()),
                "word.vad_prob": float(vad.mean()) if len(vad) else 0.0,
                "word.vad_share": float((vad >= 0.5).mean()) if len(vad) else 0.0,
                "word.speech_distance_s": float(gap) / alignment.TOKENS_PER_SECOND,
                "word.energy_db": float(energy.mean()) if len(energy) else -100.0,
                "word.energy_rel_db": (float(energy.mean()) if len(energy) else -100.0) - window_p90,
                "word.logprob_mean": float(np.mean(lp[lo:hi])),
                "word.logprob_min": float(np.min(lp[lo:hi])),
                "word.entropy_mean": float(np.mean(ent[lo:hi])),
                "word.argmax_agree": float(np.mean(ok[lo:hi])),
                "word.probability": float(w.probability),
                "word.repeat": float(bool(norm) and f" {norm} " in f" {seen} "),
                "word.trigram_repeat": float(len(history) >= 2 and bool(norm) and f" {trigram} " in f" {seen} "),
                "word.position": k / max(1, len(words) - 1),
                "word.from_end": float(len(words) - 1 - k),
                "word.segment_in_window": s / max(1, n_seg - 1),
                "seg.score": float(segment_scores[s]),
                **context,
            })
            if norm:
                history.append(norm)
        add_relative(rows)
        out.append(rows)
    return out

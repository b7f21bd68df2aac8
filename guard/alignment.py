"""Word timestamps from the cross-attention of the probe's own teacher-forced pass.

What CTranslate2's `Whisper.align` (src/models/whisper.cc) and openai-whisper's `find_alignment`
do, on attention the probe already computed, so no second decoder pass runs:

1. the alignment heads' attention of the rows that predict each text token (+ the row after the
   last one), softmax'd over the window's real frames only (CT2 cuts the padding off before its
   softmax; renormalising the full softmax over those frames is the same thing);
2. standardised per head and frame over the token rows (CT2's `NormalizeAttentionWeights`: a layer
   norm over the token axis, epsilon 0), median filter of width 7 along frames (reflecting at the
   edges), mean over heads;
3. DTW on the negated matrix; a token starts where the path first reaches its row;
4. tokens merged into words as faster-whisper does (`find_alignment`, `add_word_timestamps`):
   words split on spaces by the tokenizer, punctuation merged with `merge_punctuations`, the
   median/maximum-duration clamps at sentence and segment boundaries.

Everything here is numpy and independent of the model: inputs are attention rows and token ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from faster_whisper.transcribe import merge_punctuations

TOKENS_PER_SECOND = 50  # encoder frames per second (20 ms each)
MEDIAN_WIDTH = 7
SENTENCE_END = ".。!！?？"
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def default_alignment_heads(n_layers: int, n_heads: int) -> np.ndarray:
    """CTranslate2's converter default when a model's config lacks `alignment_heads`: every head of
    the last half of the decoder layers."""
    return np.array([(l, h) for l in range(n_layers // 2, n_layers) for h in range(n_heads)], dtype=np.int64)


# ---------------------------------------------------------------- matrix
def content_softmax(patterns: np.ndarray, n_frames: int) -> np.ndarray:
    """[..., F] attention probabilities over all frames -> probabilities over the first n_frames."""
    content = patterns[..., :n_frames].astype(np.float32)
    return content / np.maximum(content.sum(-1, keepdims=True), np.finfo(np.float32).tiny)


def standardise_tokens(weights: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the token axis (-2), per head and frame; a constant column becomes 0."""
    mean = weights.mean(-2, keepdims=True)
    std = weights.std(-2, keepdims=True)
    return np.where(std > 0, (weights - mean) / np.where(std > 0, std, 1), 0.0).astype(np.float32)


# Devillard's median-of-7 selection network (13 compare-exchanges): the exact middle value, as
# std::nth_element gives, in a few vectorised min/max passes instead of a sort per window.
_MEDIAN7 = ((0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6), (2, 3), (3, 6), (4, 5), (1, 4), (1, 3), (3, 4))


def median_filter(x: np.ndarray, width: int = MEDIAN_WIDTH) -> np.ndarray:
    """Median over a sliding window along the last axis, reflecting at the edges (edge not repeated).

    As CTranslate2's MedianFilter: an axis no longer than width // 2 passes through unchanged."""
    half = width // 2
    n = x.shape[-1]
    if n <= half:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="reflect")
    if width != 7:
        windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
        return np.partition(windows, half, axis=-1)[..., half]
    p = [padded[..., k:k + n] for k in range(7)]  # views of the padded input until first written
    owned = [False] * 7
    scratch = np.empty(p[0].shape, x.dtype)
    for a, b in _MEDIAN7:
        lo = np.minimum(p[a], p[b], out=scratch)
        hi = np.maximum(p[a], p[b], out=p[b] if owned[b] else None)
        old = p[a]
        p[a], p[b] = lo, hi
        scratch = old if owned[a] else np.empty(lo.shape, x.dtype)
        owned[a] = owned[b] = True
    return p[3]


def alignment_matrix(head_patterns: np.ndarray, n_frames: int, matrix_rows: slice,
                     width: int = MEDIAN_WIDTH) -> np.ndarray:
    """[heads, rows, F] attention -> the [tokens + 1, n_frames] matrix that DTW walks.

    `head_patterns` holds every row the standardisation sees (the start-of-transcript rows, the
    rows predicting text tokens and end-of-text, the end-of-text row); `matrix_rows` picks the
    rows predicting the text tokens and the end of text."""
    weights = standardise_tokens(content_softmax(head_patterns, n_frames))[:, matrix_rows]
    return median_filter(weights, width).mean(0)


# ---------------------------------------------------------------- DTW
@dataclass
class Path:
    """A monotonic DTW path through [rows, frames]: cell k is (text_index[k], time_index[k])."""

    text_index: np.ndarray
    time_index: np.ndarray
    cost: np.ndarray = field(repr=False)  # accumulated cost matrix [rows + 1, frames + 1]


def negative_dtw(x: np.ndarray) -> Path:
    """DTW on -x, as CTranslate2's `negative_dtw` / openai-whisper's `dtw_cpu`.

    cost[i, j] = -x[i-1, j-1] + min(diagonal, up, left); ties go left unless diagonal or up is
    strictly smallest. Rows are filled one at a time: along a row the recurrence
    c[j] = v[j] + min(b[j], c[j-1]) is a running minimum of b[j] - V[j-1] (V the running sum of v),
    so each row costs a few vector operations instead of a Python loop over frames."""
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    cost[0, 0] = 0.0
    for i in range(1, n + 1):
        v = -x[i - 1]
        above = cost[i - 1]
        b = np.minimum(above[:-1], above[1:])  # diagonal, up for j = 1..m
        before = np.concatenate([[0.0], np.cumsum(v)[:-1]])  # V[j-1]
        run = np.minimum.accumulate(b - before)
        cost[i, 1:] = run + before + v
    return Path(*_backtrace(cost), cost)


def _backtrace(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = cost.shape[0] - 1, cost.shape[1] - 1
    text, time = [], []
    while i > 0 and j > 0:
        text.append(i - 1)
        time.append(j - 1)
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        if c0 < c1 and c0 < c2:
            i, j = i - 1, j - 1
        elif c1 < c0 and c1 < c2:
            i -= 1
        else:
            j -= 1
    while j > 0:  # cannot happen with finite costs: the path always ends through (1, 1)
        text.append(0)
        time.append(j - 1)
        j -= 1
    return np.array(text[::-1], dtype=np.int64), np.array(time[::-1], dtype=np.int64)


def token_start_frames(path: Path) -> np.ndarray:
    """Frame where the path first reaches each row (a 'jump' in openai-whisper's words)."""
    jumps = np.concatenate([[True], np.diff(path.text_index) != 0])
    return path.time_index[jumps]


# ---------------------------------------------------------------- words
@dataclass
class WordTiming:
    """One word of a window's alignment; times are seconds from the window start (later absolute)."""

    word: str
    tokens: list[int]
    first: int  # index of its first token in the window's text tokens
    start: float
    end: float
    probability: float


@dataclass
class WindowAlignment:
    """A window's words plus the duration limits faster-whisper's clamps use for all its segments."""

    words: list[WordTiming]
    median: float
    longest: float


def word_timings(tokenizer, text_tokens: list[int], path: Path, token_probs: np.ndarray) -> WindowAlignment:
    """faster-whisper's `find_alignment` after the DTW: token times -> words, then (as in
    `add_word_timestamps`) the sentence-end clamp and `merge_punctuations`. Words left empty by the
    merge stay in the list (they own no tokens) so token counts keep adding up."""
    words, word_tokens = tokenizer.split_to_word_tokens(list(text_tokens) + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return WindowAlignment([], 0.0, 0.0)
    bounds = np.concatenate([[0], np.cumsum([len(t) for t in word_tokens[:-1]])]).astype(np.int64)
    jump_times = token_start_frames(path) / TOKENS_PER_SECOND
    starts, ends = jump_times[bounds[:-1]], jump_times[bounds[1:]]
    probs = [float(np.mean(token_probs[i:j])) for i, j in zip(bounds[:-1], bounds[1:])]
    alignment = [dict(word=w, tokens=list(t), start=float(s), end=float(e), probability=p)
                 for w, t, s, e, p in zip(words, word_tokens, starts, ends, probs)]
    median, longest = duration_limits(alignment)
    if median > 0:
        for i in range(1, len(alignment)):
            if alignment[i]["end"] - alignment[i]["start"] > longest:
                if alignment[i]["word"] in SENTENCE_END:
                    alignment[i]["end"] = alignment[i]["start"] + longest
                elif alignment[i - 1]["word"] in SENTENCE_END:
                    alignment[i]["start"] = alignment[i]["end"] - longest
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    firsts = np.concatenate([[0], np.cumsum([len(a["tokens"]) for a in alignment])[:-1]]).astype(int)
    return WindowAlignment([WordTiming(a["word"], a["tokens"], int(f), a["start"], a["end"], a["probability"])
                            for a, f in zip(alignment, firsts)], median, longest)


def duration_limits(alignment: list[dict]) -> tuple[float, float]:
    """(median word duration capped at 0.7 s, twice that), over the words with non-zero duration."""
    durations = np.array([a["end"] - a["start"] for a in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    return median, median * 2


def split_by_segment(aligned: WindowAlignment, text_counts: list[int], time_offset: float) -> list[list[WordTiming]]:
    """Hand a window's words to its segments by their text-token counts (as faster-whisper does);
    times become absolute, rounded to 10 ms; words emptied by the punctuation merge are dropped."""
    out, index = [], 0
    for n_text in text_counts:
        saved, words = 0, []
        while index < len(aligned.words) and saved < n_text:
            t = aligned.words[index]
            if t.word:
                words.append(WordTiming(t.word, t.tokens, t.first, round(time_offset + t.start, 2),
                                        round(time_offset + t.end, 2), t.probability))
            saved += len(t.tokens)
            index += 1
        out.append(words)
    return out


def clamp_segment(words: list, seg_start: float, seg_end: float, median: float, longest: float,
                  last_speech: float) -> float:
    """faster-whisper's clamps of one segment's words (objects with .start/.end, changed in place):
    a long first word after a pause, a first/last word that overruns the segment's timestamps.
    Returns the new last-speech time. The segment's own times are not changed here (faster-whisper
    moves them to its words; the guard reports the segments of a decode without word timestamps)."""
    if not words:
        return last_speech
    first, last = words[0], words[-1]
    if first.end - last_speech > median * 4 and (
            first.end - first.start > longest or (len(words) > 1 and words[1].end - first.start > longest * 2)):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            boundary = max(words[1].end / 2, words[1].end - longest)
            first.end = words[1].start = boundary
        first.start = max(0, first.end - longest)
    if not (seg_start < first.end and seg_start - 0.5 > first.start):
        seg_start = first.start
    else:
        first.start = max(0, min(first.end - median, seg_start))
    if seg_end > last.start and seg_end + 0.5 < last.end:
        last.end = max(last.start + median, seg_end)
    else:
        seg_end = last.end
    return seg_end

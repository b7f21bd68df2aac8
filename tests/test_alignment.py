"""guard.alignment on closed-form inputs: DTW paths, the median filter, the matrix, words and clamps."""
from __future__ import annotations

import numpy as np
import pytest

from guard import alignment
from guard.alignment import WindowAlignment, WordTiming


def reference_dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The textbook double loop (openai-whisper's dtw_cpu / CTranslate2's negative_dtw) on -x."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1), dtype=int)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = -x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :], trace[:, 0] = 2, 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        i, j = (i - 1, j - 1) if trace[i, j] == 0 else (i - 1, j) if trace[i, j] == 1 else (i, j - 1)
    path = np.array(path[::-1])
    return path[:, 0], path[:, 1]


def test_dtw_on_a_diagonal_walks_the_diagonal():
    path = alignment.negative_dtw(2 * np.eye(6) - 1)  # +1 on the diagonal, -1 elsewhere: one optimum
    assert path.text_index.tolist() == list(range(6))
    assert path.time_index.tolist() == list(range(6))
    assert alignment.token_start_frames(path).tolist() == list(range(6))


def test_dtw_on_a_shifted_stretched_diagonal_gives_the_known_jumps():
    # token k is heard in frames [3k + 2, 3k + 5): the path must enter row k at frame 3k + 2
    # (row 0 from frame 0: the path starts in the corner)
    n, m = 5, 20
    x = -np.ones((n, m))
    for k in range(n):
        x[k, 3 * k + 2:3 * k + 5] = 1.0
    starts = alignment.token_start_frames(alignment.negative_dtw(x))
    assert starts.tolist() == [0] + [3 * k + 2 for k in range(1, n)]


def test_dtw_path_is_monotonic_and_matches_the_reference_loop():
    rng = np.random.default_rng(7)
    for _ in range(25):
        n, m = rng.integers(1, 10), rng.integers(1, 50)
        x = rng.normal(size=(n, m))
        path = alignment.negative_dtw(x)
        t, f = reference_dtw(x)
        assert np.array_equal(path.text_index, t) and np.array_equal(path.time_index, f)
        steps = np.stack([np.diff(path.text_index), np.diff(path.time_index)], 1)
        assert set(map(tuple, steps)) <= {(1, 1), (1, 0), (0, 1)}
        assert (path.text_index[0], path.time_index[0]) == (0, 0)
        assert (path.text_index[-1], path.time_index[-1]) == (n - 1, m - 1)


def test_median_filter_matches_numpy_median_with_reflecting_edges():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 40)).astype(np.float32)
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3)], mode="reflect")
    expected = np.median(np.lib.stride_tricks.sliding_window_view(padded, 7, axis=-1), axis=-1)
    assert np.array_equal(alignment.median_filter(x), expected)
    assert np.array_equal(alignment.median_filter(x, 5)[..., 2:-2],
                          np.median(np.lib.stride_tricks.sliding_window_view(x, 5, axis=-1), axis=-1))
    short = x[..., :3]
    assert np.array_equal(alignment.median_filter(short), short)  # as CTranslate2: too short passes through


def test_matrix_renormalises_over_real_frames_and_standardises_per_frame():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 6, 50))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # softmax over all 50 frames
    content = alignment.content_softmax(probs, 20)
    truncated = np.exp(logits[..., :20]) / np.exp(logits[..., :20]).sum(-1, keepdims=True)
    assert np.allclose(content, truncated, atol=1e-6)  # = a softmax over the real frames only
    z = alignment.standardise_tokens(content)
    assert np.allclose(z.mean(-2), 0, atol=1e-5) and np.allclose(z.std(-2), 1, atol=1e-4)
    m = alignment.alignment_matrix(probs, 20, slice(1, 5))
    assert m.shape == (4, 20)


class _Tokenizer:
    """Words split on a leading space, as faster-whisper's split_tokens_on_spaces does."""

    eot = 99

    def __init__(self, pieces: dict[int, str]):
        self.pieces = pieces

    def split_to_word_tokens(self, tokens):
        words, groups = [], []
        for t in tokens:
            piece = self.pieces.get(t, "")
            if t == self.eot or not groups or piece.startswith(" ") or piece in ".,!?":
                words.append(piece)
                groups.append([t])
            else:
                words[-1] += piece
                groups[-1].append(t)
        return words, groups


def test_words_from_jumps_with_punctuation_merged():
    tok = _Tokenizer({1: " Hello", 2: ",", 3: " wor", 4: "ld", 5: "."})
    # one row per token plus the end-of-text row; token k starts at frame 10k
    n, m = 6, 70
    x = -np.ones((n, m))
    for k in range(n):
        x[k, 10 * k:10 * k + 10] = 1.0
    aligned = alignment.word_timings(tok, [1, 2, 3, 4, 5], alignment.negative_dtw(x), np.full(5, 0.5))
    words = [w for w in aligned.words if w.word]
    assert [w.word for w in words] == [" Hello,", " world."]
    assert words[0].start == 0.0 and words[1].start == pytest.approx(0.4)
    assert words[1].tokens == [3, 4, 5] and words[1].first == 2
    assert words[0].probability == 0.5
    split = alignment.split_by_segment(aligned, [2, 3], time_offset=30.0)
    assert [[w.word for w in s] for s in split] == [[" Hello,"], [" world."]]
    assert split[1][0].start == pytest.approx(30.4)


def test_clamps_follow_faster_whisper():
    words = [WordTiming(" a", [1], 0, 1.0, 4.0, 0.9), WordTiming(" b", [2], 1, 4.0, 4.3, 0.9)]
    # a first word after a long pause that lasts far longer than twice the median is cut to that
    last = alignment.clamp_segment(words, 3.5, 4.3, median=0.3, longest=0.6, last_speech=0.0)
    assert words[0].start == pytest.approx(3.4) and words[0].end == 4.0
    assert last == pytest.approx(4.3)
    assert alignment.clamp_segment([], 0, 1, 0.3, 0.6, 2.0) == 2.0
    assert alignment.duration_limits([{"start": 0, "end": 0.2}, {"start": 0.2, "end": 2.0}, {"start": 2, "end": 2}]) \
        == (pytest.approx(0.7), pytest.approx(1.4))
    assert WindowAlignment([], 0, 0).words == []


def test_default_alignment_heads_are_the_last_half_of_the_layers():
    heads = alignment.default_alignment_heads(4, 2)
    assert heads.tolist() == [[2, 0], [2, 1], [3, 0], [3, 1]]


def test_plan_walks_the_rows_that_predict_each_text_token():
    """The DTW rows are the rows predicting each text token, as in `align`; at a segment boundary
    that is the start timestamp's row, not the previous segment's last text token (which here
    predicts the end timestamp), then the last text token's own row (`align`: predicts end of text)."""
    from guard.words import plan

    eot, sot = 100, 99
    t0, t1, t1b, t2 = 101, 120, 121, 140  # timestamp tokens (> eot)
    a, b, c, d = 5, 6, 7, 8
    tokens = [t0, a, b, t1, t1b, c, d, t2]
    p = plan([sot], tokens, [(0, 4), (4, 8)], [sot], eot)
    assert p.text_tokens == [a, b, c, d] and p.text_counts == [2, 2]
    # input positions: 0 sot, 1 t0, 2 a, 3 b, 4 t1, 5 t1b, 6 c, 7 d, 8 t2
    assert list(p.predict_rows) == [1, 2, 5, 6]
    assert list(p.std_rows[p.matrix]) == [1, 2, 5, 6, 7]
    assert list(p.std_rows) == [0, 1, 2, 5, 6, 7, 8]  # + start of transcript and the row after the last
    # one segment: the rows are contiguous, exactly `align`'s (no timestamps between the tokens)
    q = plan([sot], [t0, a, b, c, t1], [(0, 5)], [sot], eot)
    assert list(q.std_rows[q.matrix]) == [1, 2, 3, 4]

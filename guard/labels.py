"""Label transcribed segments against a reference corpus (the corpus README's rule).

A segment is hallucinated when at least half of its normalised words are unsupported by the
clip's reference (insertions, or substitutions sharing under 50% of their characters with the
word that was said), or when it lies entirely outside the clip's speech intervals widened by
1 s. A hypothesis word that only exists because one reference word was split in two counts as a
substitution. Segments without words are not labelled. Used by `whisper-guard calibrate` and the
benchmarks; `tests/test_labels.py` checks it agrees with the corpus' own scorer.
"""
from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from difflib import SequenceMatcher

import numpy as np

TOLERANCE_S = 1.0
UNSUPPORTED_SHARE = 0.5
SIMILAR = 0.5
SPLIT_JOIN = 0.8

try:
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    _ENGLISH, _BASIC = EnglishTextNormalizer(), BasicTextNormalizer()
except ImportError:  # pragma: no cover
    _ENGLISH = _BASIC = None


def words(text: str, lang: str | None) -> list[str]:
    if _ENGLISH is not None:
        text = (_ENGLISH if lang in (None, "en") else _BASIC)(text)
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[^\w\s']", " ", text).split()


def _similar(a: str, b: str) -> float:
    return SequenceMatcher(None, a, b).ratio()


def word_ops(hyp: list[str], ref: list[str]) -> list[str]:
    """Per hypothesis word: ok | sub | far | ins, from a Levenshtein alignment."""
    return [op for op, _ in align(hyp, ref)]


def align(hyp: list[str], ref: list[str]) -> list[tuple[str, int | None]]:
    """Per hypothesis word: its op (as `word_ops`) and the index of the reference word it is aligned
    with (None for an insertion)."""
    n, m = len(hyp), len(ref)
    cost = np.zeros((n + 1, m + 1), dtype=np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(cost[i - 1, j] + 1, cost[i, j - 1] + 1, cost[i - 1, j - 1] + (hyp[i - 1] != ref[j - 1]))
    ops, matched = [], []
    i, j = n, m
    while i > 0:
        if j > 0 and cost[i, j] == cost[i - 1, j - 1] + (hyp[i - 1] != ref[j - 1]):
            same = hyp[i - 1] == ref[j - 1]
            ops.append("ok" if same else "sub" if _similar(hyp[i - 1], ref[j - 1]) >= SIMILAR else "far")
            matched.append(j - 1)
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            ops.append("ins")
            matched.append(None)
            i -= 1
        else:
            j -= 1
    ops.reverse()
    matched.reverse()
    for k, op in enumerate(ops):
        if op in ("ins", "far"):
            for nb in (k - 1, k + 1):
                if 0 <= nb < n and matched[nb] is not None and \
                        _similar(hyp[min(k, nb)] + hyp[max(k, nb)], ref[matched[nb]]) >= SPLIT_JOIN:
                    ops[k] = "sub"
                    break
    return list(zip(ops, matched))


def outside_speech(start: float, end: float, speech: list[list[float]]) -> bool:
    return all(end <= s - TOLERANCE_S or start >= e + TOLERANCE_S for s, e in speech)


def clip_alignment(clip: dict, segments: list[dict]) -> list[tuple[dict, list[str], list[tuple[str, int | None]]]]:
    """Per segment of one clip, in time order: the segment, its normalised words and their `align` ops
    against the clip's reference. All segments are aligned at once, as the corpus rule does."""
    segs = sorted(segments, key=lambda p: (p["start"], p["end"]))
    seg_words = [words(p.get("text", ""), clip.get("lang")) for p in segs]
    ops = align([w for ws in seg_words for w in ws], words(clip.get("text", ""), clip.get("lang")))
    out, k = [], 0
    for seg, ws in zip(segs, seg_words):
        out.append((seg, ws, ops[k:k + len(ws)]))
        k += len(ws)
    return out


def label_segments(clips: dict[str, dict], segments: list[dict]) -> list[dict]:
    """Rows of `segments` ({id, start, end, text, ...}) with `label` (1 = hallucinated) and `n_words`."""
    by_clip: dict[str, list[dict]] = defaultdict(list)
    for seg in segments:
        by_clip[seg["id"]].append(seg)
    out = []
    for cid, segs in by_clip.items():
        clip = clips[cid]
        for seg, ws, aligned in clip_alignment(clip, segs):
            if not ws:
                continue
            seg_ops = [op for op, _ in aligned]
            unsupported = (seg_ops.count("ins") + seg_ops.count("far")) / len(ws)
            hallucinated = unsupported >= UNSUPPORTED_SHARE or outside_speech(seg["start"], seg["end"], clip["speech"])
            out.append({**seg, "label": int(hallucinated), "n_words": len(ws), "kind": clip["kind"],
                        "category": clip.get("category"), "condition": clip.get("condition")})
    return out

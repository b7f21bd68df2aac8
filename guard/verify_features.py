"""Style-robust evidence for Verify: the given text set against the guard's own decode of the audio.

Verify scores a transcript that another system wrote, in whatever style that system writes:
cased or not, punctuated or not, "fifty" or "50". Two things here make the score not care:

- `align_window` normalises the given text and the guard's own decode of the same window with
  Whisper's text normaliser (case, punctuation, number format and spelling are equated) and aligns
  them word by word. Where the given words match the decode, the decode's own surface form is what
  gets teacher-forced (Whisper's style, so a true transcript reads as likely as Whisper's own);
  where they do not, the normalised given words are. The text fed to the probe is then a function
  of the normalised words and the audio only, so every style of one transcript scores the same.
- per segment, agreement with the decode (share of the given words the decode also wrote, words
  the decode heard inside the segment that the text leaves out, words it heard right before or
  after the segment that no given segment holds, the longest stretch of given words the decode did
  not write and of decoded words the text lacks, character similarity), none of
  which grows with length: a one-word answer is judged by whether Whisper hears that word.

`logprob_features` sets the teacher-forced log-prob against the decode's own best path.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from difflib import SequenceMatcher

from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

_ENGLISH = EnglishTextNormalizer()
_BASIC = BasicTextNormalizer()
_NON_WORD = re.compile(r"[^\w\s']")


def normalised_words(text: str, language: str | None) -> list[str]:
    """Whisper's normaliser (English one for en, basic otherwise), NFKC, lowercase, words only."""
    text = (_ENGLISH if language in (None, "en") else _BASIC)(text)
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()


@dataclass
class OwnDecode:
    """The guard's own greedy/beam decode of one verify window."""

    text: str
    avg_logprob: float  # faster-whisper's: sum of token log-probs / (tokens + 1)
    no_speech_prob: float


@dataclass
class Aligned:
    """One given segment after alignment with the window's own decode."""

    canonical: str  # the text to teacher-force
    features: dict[str, float]


def _restyle(words: list[str]) -> str:
    text = " ".join(words)
    return text[:1].upper() + text[1:] + ("." if text[-1:].isalnum() else "") if text else text


def _longest_false_run(flags: list[bool]) -> int:
    best = run = 0
    for f in flags:
        run = 0 if f else run + 1
        best = max(best, run)
    return best


def align_window(given: list[str], own_text: str, language: str | None) -> list[Aligned]:
    """Canonical text and agreement features for each given segment of one window.

    The window's given segments are concatenated and aligned to the decode as one sequence, so a
    decode that splits sentences differently from the given segments does not matter.
    """
    g_words, seg_of, lo_hi = [], [], []
    for k, text in enumerate(given):
        w = normalised_words(text, language)
        lo_hi.append((len(g_words), len(g_words) + len(w)))
        g_words += w
        seg_of += [k] * len(w)
    surfaces = own_text.split()
    o_words, o_surface = [], []  # own normalised words, and which surface word each came from
    for j, surface in enumerate(surfaces):
        for w in normalised_words(surface, language):
            o_words.append(w)
            o_surface.append(j)
    ops = SequenceMatcher(None, g_words, o_words, autojunk=False).get_opcodes()
    pieces: list[list[tuple[str, str]]] = [[] for _ in given]  # per segment: (kind, text)
    matched = [0] * len(given)
    missing = [0] * len(given)
    edge = [0] * len(given)  # decoded words next to a segment's first or last word, in no segment
    missing_run = [0] * len(given)  # the longest such stretch of decoded words (inside or at an edge)
    agrees = [False] * len(g_words)  # given word i is one the decode also wrote
    own_of = [[] for _ in given]  # own word indices aligned to each segment
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                k = seg_of[i]
                agrees[i] = True
                matched[k] += 1
                own_of[k].append(j)
                if not pieces[k] or pieces[k][-1] != ("own", o_surface[j]):
                    pieces[k].append(("own", o_surface[j]))
        elif tag == "insert":  # words the decode heard that the text does not have
            inside = [k for k, (lo, hi) in enumerate(lo_hi) if lo < i1 < hi]
            for k in inside:
                missing[k] += j2 - j1
                missing_run[k] = max(missing_run[k], j2 - j1)
                own_of[k] += list(range(j1, j2))
            if not inside:  # before a segment's first word or after its last: both neighbours
                for k, (lo, hi) in enumerate(lo_hi):
                    if hi > lo and i1 in (lo, hi):
                        edge[k] += j2 - j1
                        missing_run[k] = max(missing_run[k], j2 - j1)
        else:  # replace / delete: given words the decode did not write
            for i in range(i1, i2):
                pieces[seg_of[i]].append(("given", g_words[i]))
            if tag == "replace":
                owners = [seg_of[i] for i in range(i1, i2)]
                share = max(set(owners), key=owners.count)
                own_of[share] += list(range(j1, j2))
    out = []
    for k, text in enumerate(given):
        lo, hi = lo_hi[k]
        n = hi - lo
        if n == 0:  # nothing the normaliser keeps (e.g. only symbols): teacher-force it as given
            canonical = text.strip()
        else:
            words = [surfaces[p] if kind == "own" else p for kind, p in pieces[k]]
            canonical = " ".join(words) if pieces[k] and pieces[k][-1][0] == "own" else _restyle(words)
            if pieces[k] and pieces[k][0][0] == "given":
                canonical = canonical[:1].upper() + canonical[1:]
        g_chars = "".join(g_words[lo:hi])
        o_chars = "".join(o_words[j] for j in sorted(set(own_of[k])))
        sim = SequenceMatcher(None, g_chars, o_chars, autojunk=False).ratio() if g_chars or o_chars else 0.0
        out.append(Aligned(canonical, {
            "verify.own_match_share": matched[k] / n if n else 0.0,
            "verify.own_unmatched_words": float(n - matched[k]),
            "verify.own_missing_words": float(missing[k]),
            "verify.own_missing_edge_words": float(edge[k]),
            "verify.own_missing_run": float(missing_run[k]),
            "verify.own_unmatched_run": float(_longest_false_run(agrees[lo:hi])),
            "verify.own_char_similarity": float(sim),
            "verify.own_exact": float(n > 0 and matched[k] == n and missing[k] == 0),
            "verify.own_words_window": float(len(o_words)),
            "verify.given_words_window": float(len(g_words)),
        }))
    return out


def logprob_features(segment_logprob_mean: float, window_logprob_mean: float, own: OwnDecode) -> dict[str, float]:
    """The given text's teacher-forced log-prob against the decode's own best path (per token)."""
    return {
        "verify.own_avg_logprob": float(own.avg_logprob),
        "verify.own_no_speech_prob": float(own.no_speech_prob),
        "verify.logprob_gap_segment": float(own.avg_logprob - segment_logprob_mean),
        "verify.logprob_gap_window": float(own.avg_logprob - window_logprob_mean),
    }

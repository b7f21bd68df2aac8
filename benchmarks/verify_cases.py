"""DEV verify cases: true transcripts in every common text style, and invented ones, per corpus clip.

Research code (not in the wheel), used by benchmarks/verify.py. Deterministic: every choice comes
from a hash of the case id. English clips only (speech, mixtures, non-speech), since the styles
(number formats, Whisper's English normaliser) are English conventions.

A case is one Verify request: timed segments as another ASR would write them (one segment per
speech interval, the interval widened by up to 0.3 s either side), or, for a single-segment clip
up to 30 s, sometimes no times at all. Each segment carries `label` (1 = invented) and `scored`
(the segments a case is about: all segments of a true case, the altered one of an invented case).

True cases, one per style: `written` (the reference as the corpus has it), `lower` (lowercase,
punctuation removed), `digits` (number words as digits), `words` (digits as number words),
`whisper_norm` (the reference through Whisper's English normaliser).
Invented cases (each in one style drawn per case): `other_text` (another clip's reference on this
audio), `appended` (a true segment + an invented sentence, in the same segment), `inserted`
(2-4 foreign words inside a true segment), `dropped` (a true segment of 4+ words with a phrase of
30% of its words removed), `boh` (a Bag-of-Hallucinations phrase on non-speech), `boh_tail` (true
segments plus a BoH phrase timed on the clip's non-speech part).
"""
from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

from whisper_normalizer.english import EnglishNumberNormalizer, EnglishTextNormalizer

STYLES = ("written", "lower", "digits", "words", "whisper_norm")
INVENTED = ("other_text", "appended", "inserted", "dropped", "boh", "boh_tail")
JITTER_S = 0.3
UNTIMED_SHARE = 0.3

_EN = EnglishTextNormalizer()
_NUM = EnglishNumberNormalizer()
_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
         "seventeen eighteen nineteen".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
        "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth thirtieth fortieth fiftieth sixtieth "
        "seventieth eightieth ninetieth hundredth thousandth millionth billionth").split()
NUMBER_WORDS = frozenset(_UNITS + _TENS + _ORD + ["hundred", "thousand", "million", "billion"])
_PUNCT = "\"'“”‘’.,;:!?()[]{}"


def rand(*key) -> float:
    """A deterministic draw in [0, 1) for a key."""
    return int(hashlib.sha256("|".join(map(str, key)).encode()).hexdigest()[:12], 16) / 16**12


def pick(seq, *key):
    return seq[int(rand(*key) * len(seq))]


# ---------------------------------------------------------------- styles
def _is_number(core: str) -> bool:
    parts = core.lower().split("-")
    return bool(core) and all(p in NUMBER_WORDS for p in parts)


def to_digits(text: str) -> str:
    """Runs of number words as digits ("twenty one" -> "21", "nineteenth" -> "19th"), punctuation kept."""
    tokens = text.split()
    out, i = [], 0
    while i < len(tokens):
        core = tokens[i].strip(_PUNCT)
        if not _is_number(core):
            out.append(tokens[i])
            i += 1
            continue
        j = i
        while j < len(tokens) and _is_number(tokens[j].strip(_PUNCT)):
            j += 1
            if tokens[j - 1].rstrip(_PUNCT) != tokens[j - 1]:  # punctuation ends a number
                break
        run = [t.strip(_PUNCT).lower().replace("-", " ") for t in tokens[i:j]]
        digits = str(_UNITS.index(run[0])) if len(run) == 1 and run[0] in _UNITS else _NUM(" ".join(run))
        lead = tokens[i][:len(tokens[i]) - len(tokens[i].lstrip(_PUNCT))]
        trail = tokens[j - 1][len(tokens[j - 1].rstrip(_PUNCT)):]
        out.append(lead + digits + trail)
        i = j
    return " ".join(out)


def to_words(text: str) -> str:
    """Digits as words ("50" -> "fifty", "19th" -> "nineteenth"), punctuation kept."""
    from num2words import num2words

    def one(m: re.Match) -> str:
        n = int(m.group(1))
        return num2words(n, to="ordinal") if m.group(2) else num2words(n).replace(",", "")

    return re.sub(r"\b(\d{1,9})(st|nd|rd|th)?\b", one, text)


def restyle(text: str, style: str) -> str:
    if style == "written":
        return text
    if style == "lower":
        return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())
    if style == "digits":
        return to_digits(text)
    if style == "words":
        return to_words(text)
    if style == "whisper_norm":
        return _EN(text)
    raise ValueError(style)


# ---------------------------------------------------------------- phrases
def boh_phrases(path: Path) -> list[str]:
    """Bag-of-Hallucinations phrases of 1-12 words, with apostrophes and a capital restored."""
    out = []
    for row in csv.DictReader(path.read_text(encoding="utf-8").splitlines()):
        p = row["prediction"].strip()
        if not p or len(p.split()) > 12:
            continue
        p = re.sub(r"\b(i|you|we|they|he|she|it|that|there|what|let) (m|re|ve|ll|s|d)\b", r"\1'\2", p)
        p = re.sub(r"(\w) t\b", r"\1't", p)
        p = re.sub(r"\bi\b", "I", p)
        out.append(p[:1].upper() + p[1:] + ".")
    return out


# ---------------------------------------------------------------- true segments
def true_segments(clip: dict, clips: dict[str, dict]) -> list[tuple[float, float, str]]:
    """(start, end, text) per speech interval; a mixture's prompts take their source clip's text."""
    speech = clip.get("speech") or []
    if not speech or not clip.get("text", "").strip():
        return []
    if clip["kind"] == "mixture":
        texts = [clips[p["from"]]["text"] for p in clip.get("parts") or []
                 if p.get("from") in clips and clips[p["from"]]["kind"] == "speech"]
        if len(texts) == len(speech):
            return [(s, e, t) for (s, e), t in zip(speech, texts)]
    return [(speech[0][0], speech[-1][1], clip["text"])]


def _timed(cid: str, start: float, end: float, duration: float, k: int) -> tuple[float, float]:
    s = max(0.0, start - JITTER_S * rand(cid, "s", k))
    e = min(duration, end + JITTER_S * rand(cid, "e", k))
    return round(s, 2), round(max(e, s + 0.1), 2)


def _gap(clip: dict) -> tuple[float, float] | None:
    """The longest stretch of the clip without speech (at least 1.5 s, 0.3 s clear of speech)."""
    edges = [0.0] + [x for iv in clip.get("speech") or [] for x in iv] + [clip["duration"]]
    best = None
    for a, b in zip(edges[::2], edges[1::2]):
        a, b = a + 0.3 if a > 0 else a, b - 0.3 if b < clip["duration"] else b
        if b - a >= 1.5 and (best is None or b - a > best[1] - best[0]):
            best = (a, b)
    return best


def cases_for(clip: dict, clips: dict[str, dict], phrases: list[str], donors: list[dict]) -> list[dict]:
    """Every verify case of one clip (see the module docstring)."""
    cid, dur = clip["id"], clip["duration"]
    segs = true_segments(clip, clips)
    out = []

    def case(kind: str, style: str, parts: list[tuple[float, float, str, int, bool]], timed: bool = True) -> None:
        n = sum(1 for c in out if c["kind"] == kind)
        out.append({"case": f"{cid}:{kind}:{style}:{n}", "clip": cid, "kind": kind, "style": style,
                    "timed": timed, "segments": [{"text": restyle(t, style), "start": s if timed else None,
                                                  "end": e if timed else None, "label": lab, "scored": sc}
                                                 for s, e, t, lab, sc in parts]})

    def donor_text(*key) -> str:
        own = {" ".join(_EN(t).split()) for _, _, t in segs}
        for attempt in range(10):
            d = pick(donors, cid, *key, attempt)
            if d["id"] != cid and " ".join(_EN(d["text"]).split()) not in own:
                return d["text"]
        return donors[0]["text"]

    if segs:
        timed_segs = [(*_timed(cid, s, e, dur, k), t) for k, (s, e, t) in enumerate(segs)]
        untimed = len(segs) == 1 and dur <= 30.0 and rand(cid, "untimed") < UNTIMED_SHARE
        base = [(s, e, t, 0, True) for s, e, t in timed_segs]
        for style in STYLES:
            case("true", style, base, timed=not untimed)
        k = int(rand(cid, "which") * len(timed_segs))
        s, e, t = timed_segs[k]

        def altered(text: str) -> list:
            return [(a, b, c, 0, False) if i != k else (a, b, text, 1, True) for i, (a, b, c) in enumerate(timed_segs)]

        words = t.split()
        case("other_text", pick(STYLES, cid, "st1"), altered(donor_text("other")), timed=not untimed)
        extra = pick(phrases, cid, "app") if rand(cid, "appkind") < 0.5 else donor_text("app")
        case("appended", pick(STYLES, cid, "st2"), altered(t.rstrip() + " " + extra), timed=not untimed)
        foreign = donor_text("ins").split()
        n_ins = 2 + int(rand(cid, "nins") * 3)
        at = int(rand(cid, "insat") * (len(foreign) - n_ins + 1)) if len(foreign) > n_ins else 0
        pos = int(rand(cid, "inspos") * (len(words) + 1))
        case("inserted", pick(STYLES, cid, "st3"),
             altered(" ".join(words[:pos] + foreign[at:at + n_ins] + words[pos:])), timed=not untimed)
        if len(words) >= 4:
            n_drop = max(2, round(0.3 * len(words)))
            at = int(rand(cid, "drop") * (len(words) - n_drop + 1))
            case("dropped", pick(STYLES, cid, "st4"), altered(" ".join(words[:at] + words[at + n_drop:])),
                 timed=not untimed)
        gap = _gap(clip)
        if gap is not None:
            a, b = gap
            span = min(b - a, 2.0 + 6.0 * rand(cid, "tail"))
            ts = round(a + (b - a - span) * rand(cid, "tailat"), 2)
            tail = (ts, round(ts + span, 2), pick(phrases, cid, "tailp"), 1, True)
            parts = sorted([(s2, e2, t2, 0, False) for s2, e2, t2 in timed_segs] + [tail])
            case("boh_tail", pick(STYLES, cid, "st5"), parts)
    else:  # no speech at all: spans start at 0 (so the cases of a clip share one window), lengths vary
        for n in range(2):
            b = min(dur, 1.0 + min(10.0, dur) * rand(cid, "bohlen", n))
            timed = not (n == 1 and dur <= 30.0)
            case("boh", pick(STYLES, cid, "st6", n), [(0.0, round(max(b, 0.5), 2), pick(phrases, cid, "bohp", n),
                                                      1, True)], timed=timed)
        b = min(dur, 1.0 + min(10.0, dur) * rand(cid, "othlen"))
        case("other_text", pick(STYLES, cid, "st7"), [(0.0, round(max(b, 0.5), 2), donor_text("other"), 1, True)])
    return [c for c in out if all(s["text"].strip() for s in c["segments"])]


def english(clip: dict) -> bool:
    return clip.get("lang") in ("en", None)


def build(clips: dict[str, dict], phrases: list[str], side: dict[str, str]) -> dict[str, list[dict]]:
    """Clip id -> its cases, for every English clip; another clip's text comes from the same split side."""
    donors = {s: sorted((c for c in clips.values() if c["kind"] == "speech" and english(c) and c["text"].strip()
                         and side[c["id"]] == s), key=lambda c: c["id"]) for s in set(side.values())}
    return {cid: cases_for(c, clips, phrases, donors[side[cid]]) for cid, c in sorted(clips.items()) if english(c)}

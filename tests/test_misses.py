"""benchmarks/misses.py sorts a missed hallucination by the part of the corpus rule that labelled it;
each cause on a clip built to show it, through the real labeller."""
from __future__ import annotations

import sys

from conftest import ROOT

from guard.labels import label_segments

sys.path.insert(0, str(ROOT / "benchmarks"))
import misses  # noqa: E402


def _labelled(text: str, segments: list[tuple[float, float, str]], speech=((10.0, 12.0),)):
    clip = {"id": "c", "kind": "speech", "lang": "en", "text": text, "speech": [list(s) for s in speech]}
    rows = label_segments({"c": clip}, [{"id": "c", "start": a, "end": b, "text": t} for a, b, t in segments])
    return clip, rows


def test_each_cause_of_a_hallucination_label_is_told_apart():
    clip, rows = _labelled("two", [(10.0, 11.0, "to.")])
    assert rows[0]["label"] == 1  # the normaliser writes "two" as "2": "to" is `far`
    assert misses.cause(rows[0], clip, rows) == ("number written as a word", ["to->2"])

    clip, rows = _labelled("echo", [(0.0, 5.0, "Echo.")])  # right word, entirely before the speech
    assert rows[0]["label"] == 1
    assert misses.cause(rows[0], clip, rows) == ("right words, wrong time", [])

    clip, rows = _labelled("then press pound", [(0.0, 10.5, "Then press pound."), (10.5, 12.0, "Then press pound.")])
    assert [r["label"] for r in rows] == [1, 0]  # the alignment supports the copy on the speech
    assert misses.cause(rows[0], clip, rows) == ("stretched over a pause", ["then->-", "press->-", "pound->-"])

    clip, rows = _labelled("space", [(10.0, 11.0, "Steve.")])
    assert misses.cause(rows[0], clip, rows) == ("a short utterance mis-heard", ["steve->space"])

    clip, rows = _labelled("", [(0.0, 2.0, "Wait!")], speech=())
    assert misses.cause(rows[0], clip, rows) == ("text over non-speech", ["wait->-"])

    clip, rows = _labelled("nobody is available to take your call", [(10.0, 12.0, "Thank you for watching.")])
    assert rows[0]["label"] == 1
    assert misses.cause(rows[0], clip, rows)[0] == "mis-heard or invented words"

"""Labelling, the split, the logistic fit and threshold choice."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import BENCH, needs_corpus

from guard import evaluation
from guard.calibrate import groups_of, split
from guard.labels import label_segments, word_ops
from guard.score import Calibration, fit, fit_logistic, load


def test_word_ops_follow_the_corpus_rule():
    assert word_ops(["hello", "world"], ["hello", "world"]) == ["ok", "ok"]
    assert word_ops(["helo", "world"], ["hello", "world"]) == ["sub", "ok"]  # a mis-hearing
    assert word_ops(["banana", "world"], ["hello", "world"]) == ["far", "ok"]  # unrelated word
    assert word_ops(["thank", "you"], []) == ["ins", "ins"]
    assert word_ops(["bon", "jour"], ["bonjour"]) == ["sub", "sub"]  # one word split in two


def test_segment_labels_insertions_and_outside_speech():
    clips = {"c": {"id": "c", "kind": "mixture", "lang": "en", "text": "press one to continue",
                   "speech": [[2.0, 4.0]], "category": "speech_then_nonspeech"}}
    segs = [{"id": "c", "start": 2.0, "end": 4.0, "text": "Press one to continue."},
            {"id": "c", "start": 10.0, "end": 12.0, "text": "Thank you for watching."},
            {"id": "c", "start": 12.0, "end": 13.0, "text": " "}]
    rows = label_segments(clips, segs)
    assert [r["label"] for r in rows] == [0, 1]  # the wordless segment is not labelled


@needs_corpus
def test_labels_agree_with_the_corpus_scorer():
    spec = importlib.util.spec_from_file_location("bench_score", BENCH / "score.py")
    scorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scorer)
    manifest = {c["id"]: c for c in map(json.loads, (BENCH / "manifest.jsonl").read_text().splitlines())}
    rng = np.random.default_rng(1)
    ids = sorted(manifest)
    preds = []
    for cid in rng.choice(ids, 120, replace=False):  # reference text, a made-up loop, and a shifted copy
        c = manifest[cid]
        words_ref = c["text"].split()
        preds.append({"id": cid, "start": 0.0, "end": 2.0, "text": " ".join(words_ref[: max(1, len(words_ref) // 2)])})
        preds.append({"id": cid, "start": 2.0, "end": 4.0, "text": "thank you thank you so much for watching"})
        preds.append({"id": cid, "start": c["duration"] + 3, "end": c["duration"] + 5,
                      "text": " ".join(words_ref[len(words_ref) // 2:]) or "okay"})
    ours = {(r["id"], r["start"]): r["label"] for r in label_segments(manifest, [dict(p) for p in preds])}
    theirs = {(r["id"], r["start"]): r["label"] for r in scorer.label(manifest, [dict(p) for p in preds])}
    assert ours == theirs and sum(ours.values()) > 50


def test_split_is_deterministic_grouped_and_about_sixty_forty():
    clips = {}
    for i in range(200):
        clips[f"s{i}"] = {"id": f"s{i}", "kind": "speech", "category": "prompt"}
    for i in range(100):
        clips[f"m{i}"] = {"id": f"m{i}", "kind": "mixture", "category": "speech_in_noise",
                          "parts": [{"from": f"s{i}"}, {"from": "synthetic:whitenoise"}]}
    a, b = split(clips), split(clips)
    assert a == b
    groups = groups_of(clips)
    assert groups["m7"] == groups["s7"] and a["m7"] == a["s7"]  # a mixture sits with its speech clip
    share = sum(v == "val" for v in a.values()) / len(a)
    assert 0.3 < share < 0.5


def test_logistic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 3))
    true = np.array([2.0, -1.0, 0.0])
    y = (rng.random(20000) < 1 / (1 + np.exp(-(z @ true - 0.5)))).astype(float)
    coef, intercept = fit_logistic(z, y, l2=1e-6)
    np.testing.assert_allclose(coef, true, atol=0.08)
    assert intercept == pytest.approx(-0.5, abs=0.08)


def test_an_unpenalised_column_keeps_its_unshrunk_coefficient():
    """The word score's anchor (the segment score) is left out of the L2 penalty: under a penalty
    that shrinks every other column to ~0 it keeps the coefficient an unpenalised fit gives it."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(5000, 3))
    y = (rng.random(5000) < 1 / (1 + np.exp(-(z @ np.array([1.5, 1.0, -1.0]))))).astype(float)
    free = np.array([True, False, False])
    coef, _ = fit_logistic(z, y, l2=1e6, unpenalised=free)
    alone, _ = fit_logistic(z[:, :1], y, l2=1e-9)
    assert np.abs(coef[1:]).max() < 0.01
    assert coef[0] == pytest.approx(alone[0], rel=0.01)
    shrunk, _ = fit_logistic(z, y, l2=1e6)
    assert abs(shrunk[0]) < 0.01  # without the mask the same penalty shrinks it too

def test_calibration_round_trips_and_explains_scores():
    rng = np.random.default_rng(0)
    rows = [{"a": float(x), "b": float(abs(y)) + 0.1} for x, y in rng.normal(size=(400, 2))]
    labels = np.array([r["a"] > 0.3 for r in rows], dtype=int)
    cal = fit("toy", rows, labels, ["a", "b"], {"b": "log"})
    again = Calibration.from_json(json.loads(json.dumps(cal.to_json())))
    np.testing.assert_allclose(again.score(rows), cal.score(rows))
    assert evaluation.auroc(labels, cal.score(rows)) > 0.99
    top = cal.reasons({"a": 3.0, "b": 1.0})
    assert top[0].feature == "a" and top[0].contribution > 0


def test_threshold_at_fpr_keeps_false_positives_at_the_bound():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(1000), np.ones(200)]
    s = np.r_[rng.normal(0, 1, 1000), rng.normal(2, 1, 200)]
    t = evaluation.threshold_at_fpr(y, s, 0.01)
    assert (s[y == 0] > t).mean() <= 0.01
    assert evaluation.tpr_at_fpr(y, s, 0.01) == pytest.approx((s[y == 1] > t).mean())
    assert evaluation.auroc(y, s) == pytest.approx(0.92, abs=0.03)


def test_auroc_handles_ties_like_the_corpus_scorer():
    y = np.array([1, 0, 1, 0])
    assert evaluation.auroc(y, np.array([1.0, 1.0, 1.0, 1.0])) == 0.5
    assert evaluation.auroc(y, np.array([1.0, 0.0, 1.0, 0.0])) == 1.0


def test_shipped_calibrations_load_and_have_thresholds():
    for model in ("tiny.en", "base"):
        try:
            cal = load(model)
        except Exception as e:  # base is shipped once its benchmark has run
            if model == "base":
                pytest.skip(f"no shipped calibration for base yet: {e}")
            raise
        assert 0.0 < cal.thresholds["flag"] <= cal.thresholds["suppress"] <= 1.0
        assert cal.meta["fit"]["val"]["auroc"] > 0.9


def test_selection_quality_is_auroc_plus_mean_low_fpr_tpr_over_scored_rows():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    s = rng.random(400) + 0.4 * y
    expected = evaluation.auroc(y, s) + (evaluation.tpr_at_fpr(y, s, 0.01) + evaluation.tpr_at_fpr(y, s, 0.05)) / 2
    assert evaluation.selection_quality(y, s) == expected
    unscored = np.concatenate([s, [np.nan, np.inf]])
    assert evaluation.selection_quality(np.concatenate([y, [1, 0]]), unscored) == expected


def test_align_names_the_reference_word_each_hypothesis_word_stands_for():
    from guard.labels import align

    assert align(["helo", "big", "world"], ["hello", "big", "world"]) == [("sub", 0), ("ok", 1), ("ok", 2)]
    assert align(["hello", "big", "world"], ["hello", "world"]) == [("ok", 0), ("ins", None), ("ok", 1)]
    assert align(["2"], ["to"]) == [("far", 0)]  # the English normaliser writes "two" as "2"

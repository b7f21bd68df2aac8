"""Leave one language out (benchmarks/detection.py) with generated hard cases: a clip built from the
left-out language's recordings never joins that fit, the other languages' train-side clips do, and no
generated clip is ever tested. Real fits on small synthetic rows; a spy records what each fit saw."""
from __future__ import annotations

import random
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import detection  # noqa: E402


def _rows(prefix: str, lang: str | None, n: int, rng: random.Random) -> list[dict]:
    rows = []
    for k in range(n):
        y = k % 3 == 0
        rows.append({"id": f"{prefix}-{k}", "lang": lang, "label": int(y),
                     "features": {"f": rng.gauss(2.0 if y else 0.0, 1.0), "g": rng.gauss(0.0, 1.0)}})
    return rows


@pytest.fixture()
def population():
    rng = random.Random(7)
    rows, side = [], {}
    for lang in ("en", *detection.LOLO_LANGS, None):
        for s in ("train", "val"):
            part = _rows(f"dev-{lang}-{s}", lang, 30, rng)
            rows += part
            side.update({r["id"]: s for r in part})
    hc = []
    for lang in ("en", "es", "nl"):
        for s in ("train", "val"):
            part = _rows(f"hc-{lang}-{s}", lang, 12, rng)
            hc += part
            side.update({r["id"]: s for r in part})
    groups = {cid: cid for cid in side}
    return rows, hc, side, groups


def test_hard_cases_join_each_fit_except_the_left_out_language(population, monkeypatch):
    rows, hc, side, groups = population
    seen = {}
    real = detection.fit_on_split

    def spy(model, fit_rows, lside, groups_, features, **kw):
        train = {r["id"] for r in fit_rows if lside[r["id"]] == "train"}
        val = [r["id"] for r in fit_rows if lside[r["id"]] == "val"]
        seen[len(seen)] = (train, val)
        return real(model, fit_rows, lside, groups_, features, **kw)

    monkeypatch.setattr(detection, "fit_on_split", spy)
    out = detection.leave_one_language_out("base", rows, side, groups, ["f", "g"], hc)
    assert list(out) == list(detection.LOLO_LANGS)
    for (train, val), lang in zip(seen.values(), detection.LOLO_LANGS):
        hc_train = {cid for cid in train if cid.startswith("hc-")}
        expected = {r["id"] for r in hc if side[r["id"]] == "train" and r["lang"] != lang}
        assert hc_train == expected  # the other languages' generated train clips, never L's, never val
        assert not any(cid.startswith("hc-") for cid in val)  # generated clips are never tested
        assert not any(cid.startswith(f"dev-{lang}-") for cid in train)  # L never trains
        assert {cid for cid in val if cid.startswith(f"dev-{lang}-")} == {r["id"] for r in rows if r["lang"] == lang}
        assert {cid for cid in val if not cid.startswith(f"dev-{lang}-")} == {
            r["id"] for r in rows if r["lang"] is None and side[r["id"]] == "val"}
        m = out[lang]
        assert m["segments"] == 60 and m["grounded"] == 40 and m["nonspeech_segments"] == 30
        assert 0 <= m["grounded_flagged"] <= m["grounded"]
        assert m["auroc"] > 0.8  # "f" separates the synthetic labels


def test_each_fit_can_be_the_shipped_family(population):
    """`fit=`: the benchmark passes the shipped candidate's family (LightGBM trees when CV chose them); every
    left-out language is then scored by that family's fit, with its own train out-of-fold threshold."""
    import families

    rows, hc, side, groups = population
    used = []

    def trees(*a):
        fitted = families.fit_family_on_split(*a, families=("trees 4 leaves x 400",))[0]
        used.append(fitted.report["family"])
        return fitted

    out = detection.leave_one_language_out("base", rows, side, groups, ["f", "g"], hc, fit=trees)
    assert used == ["trees 4 leaves x 400"] * len(detection.LOLO_LANGS)
    logistic = detection.leave_one_language_out("base", rows, side, groups, ["f", "g"], hc)
    for lang in detection.LOLO_LANGS:
        assert out[lang]["segments"] == logistic[lang]["segments"]  # the same test clips
        assert out[lang]["threshold"] != logistic[lang]["threshold"]  # but another model's threshold
        assert out[lang]["auroc"] > 0.8


def test_trees_oof_weights_rows_only_when_asked(population):
    """benchmarks/fold_grouping_study.py weights DEV rows through `families.trees_oof(weight=)`: unit weights
    give the unweighted scores exactly, and other weights change them."""
    import families
    import numpy as np

    rows, _, _, groups = population
    params = families.GRID["trees 4 leaves x 400"]
    plain = families.trees_oof(rows, ["f", "g"], groups, params)
    assert np.array_equal(plain, families.trees_oof(rows, ["f", "g"], groups, params, np.ones(len(rows))))
    heavy = np.array([5.0 if r["label"] else 1.0 for r in rows])
    assert not np.allclose(plain, families.trees_oof(rows, ["f", "g"], groups, params, heavy))

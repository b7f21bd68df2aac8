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


def test_travel_check_holds_each_language_out_of_train_and_never_reads_validation(population, monkeypatch):
    """`families.travel_check` (the trees' second condition for a multilingual model): each language L in
    turn leaves the train side with its generated clips, the fit sees every other train row, and only L's
    train rows are scored. No validation row is ever read."""
    import families

    rows, hc, side, groups = population
    train = [r for r in rows + hc if side[r["id"]] == "train"]
    seen = []
    real = families.fit_on_split

    def spy(model, fit_rows, lside, groups_, features, **kw):
        seen.append(({r["id"] for r in fit_rows if lside[r["id"]] == "train"},
                     {r["id"] for r in fit_rows if lside[r["id"]] == "val"}))
        return real(model, fit_rows, lside, groups_, features, **kw)

    monkeypatch.setattr(families, "fit_on_split", spy)
    out = families.travel_check("base", train, groups, ["f", "g"], "logistic")
    assert list(out["languages"]) == list(families.TRAVEL_LANGS)
    for (fit_ids, scored), lang in zip(seen, families.TRAVEL_LANGS):
        assert scored == {r["id"] for r in train if r["lang"] == lang}  # L's train rows, generated ones too
        assert fit_ids == {r["id"] for r in train if r["lang"] != lang}
        assert not any(side[cid] == "val" for cid in fit_ids | scored)
        m = out["languages"][lang]
        assert m["grounded"] == sum(1 for r in train if r["lang"] == lang and not r["label"])
        assert 0 <= m["grounded_flagged"] <= m["grounded"]
    assert out["grounded_flagged"] == sum(m["grounded_flagged"] for m in out["languages"].values())
    trees = families.travel_check("base", train, groups, ["f", "g"], "trees 4 leaves x 400")
    assert [m["grounded"] for m in trees["languages"].values()] == [m["grounded"] for m in out["languages"].values()]


def _band_rows(n: int = 240) -> tuple[list[dict], dict, dict]:
    """Labels trees separate and a linear model cannot (|f| beyond a band): trees win CV by far."""
    import families

    rng = random.Random(11)
    rows, side = [], {}
    langs = ("en", *families.TRAVEL_LANGS, None)
    for k in range(n):
        f, g = rng.gauss(0, 1), rng.gauss(0, 1)
        rows.append({"id": f"c{k}", "lang": langs[k % len(langs)], "label": int(abs(f) > 0.8),
                     "features": {"f": f, "g": g}})
        side[f"c{k}"] = "val" if k % 5 == 0 else "train"
    return rows, side, {cid: cid for cid in side}


@pytest.mark.parametrize("trees_flagged, expected", [(3, "logistic"), (2, "trees 4 leaves x 400"),
                                                     (0, "trees 4 leaves x 400")])
def test_trees_that_win_cv_ship_only_if_they_travel_as_well_as_logistic(monkeypatch, trees_flagged, expected):
    """With travel=True, trees that clear TREES_MARGIN still lose to logistic when they flag more grounded
    rows of held-out languages (pooled); a tie keeps the trees. Without it, no travel check runs."""
    import families

    rows, side, groups = _band_rows()
    grid = ("logistic", "trees 4 leaves x 400")
    plain, _ = families.fit_family_on_split("base", rows, side, groups, ["f", "g"], families=grid)
    assert plain.report["family"] == "trees 4 leaves x 400" and "travel" not in plain.report
    assert plain.report["cv_quality"]["trees 4 leaves x 400"] >= plain.report["cv_quality"]["logistic"] + families.TREES_MARGIN
    calls = []

    def fake(model, train, groups_, features, family):
        calls.append((family, {side[r["id"]] for r in train}))
        n = 2 if family == "logistic" else trees_flagged
        return {"languages": {}, "grounded": 50, "grounded_flagged": n}

    monkeypatch.setattr(families, "travel_check", fake)
    fitted, _ = families.fit_family_on_split("base", rows, side, groups, ["f", "g"], families=grid, travel=True)
    assert [c[0] for c in calls] == ["logistic", "trees 4 leaves x 400"]
    assert all(sides == {"train"} for _, sides in calls)  # the check is handed train rows only
    assert fitted.report["family"] == expected
    assert fitted.report["travel"]["trees 4 leaves x 400"]["grounded_flagged"] == trees_flagged
    kind = "TreeCalibration" if expected != "logistic" else "Calibration"
    assert type(fitted.calibration).__name__ == kind

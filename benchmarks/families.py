"""Model families for the detection score, chosen by grouped cross-validation on the train side.

Research code for benchmarks/detection.py (never in the wheel): the regularised logistic model of
guard.calibrate against gradient-boosted trees (LightGBM, a small fixed grid), each scored by its
grouped 5-fold out-of-fold predictions on train with guard.calibrate.choose_l2's criterion
(AUROC + mean TPR at 1% and 5% FPR). Trees ship only where they win clearly (TREES_MARGIN), as
guard.score_trees.TreeCalibration (numpy at run time; LightGBM is a bench dependency). For a
multilingual model (`travel=True`) they must also travel as well as the logistic model: each of
TRAVEL_LANGS held out in turn from the train side, fit on the rest of train, the held-out language's
train rows scored (`travel_check`; validation is never read).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from guard import evaluation  # noqa: E402
from guard.calibrate import Fitted, group_folds, choose_l2, fit_on_split, thresholds_from, usable_features, _fit  # noqa: E402
from guard.score_trees import from_lightgbm  # noqa: E402

FOLDS = 5
TREES_MARGIN = 0.02  # trees must beat the logistic model's CV quality by this much to ship
TRAVEL_LANGS = ("es", "fr", "it", "nl")  # a multilingual model's trees must travel to each as well as logistic
GRID = {  # LightGBM's native parameter names
    "trees 4 leaves x 400": dict(num_leaves=4, num_boost_round=400, learning_rate=0.05, min_data_in_leaf=20),
    "trees 7 leaves x 300": dict(num_leaves=7, num_boost_round=300, learning_rate=0.03, min_data_in_leaf=10),
    "trees 15 leaves x 500": dict(num_leaves=15, num_boost_round=500, learning_rate=0.03, min_data_in_leaf=10,
                                  feature_fraction=0.3),
}
COMMON = dict(objective="binary", bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.5, lambda_l2=1.0,
              use_missing=False, deterministic=True, force_row_wise=True, seed=20261201, num_threads=1, verbose=-1)


def raw_matrix(rows: list[dict], features: list[str]) -> np.ndarray:
    return np.array([[r["features"].get(f, np.nan) for f in features] for r in rows], dtype=np.float64).reshape(
        len(rows), len(features))


def _filled(x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    x = x.copy()
    bad = ~np.isfinite(x)
    x[bad] = np.broadcast_to(fill, x.shape)[bad]
    return x


def _booster(x: np.ndarray, y: np.ndarray, params: dict, weight: np.ndarray | None = None):
    import lightgbm as lgb

    p = {**COMMON, **params}
    rounds = p.pop("num_boost_round")
    data = lgb.Dataset(x, y.astype(np.float64), weight=weight, free_raw_data=True)
    return lgb.train(p, data, num_boost_round=rounds)


def trees_oof(rows: list[dict], features: list[str], groups: dict[str, str], params: dict,
              weight: np.ndarray | None = None) -> np.ndarray:
    """Grouped out-of-fold scores; `weight` (one per row, optional) weights the training rows."""
    x, y = raw_matrix(rows, features), np.array([r["label"] for r in rows])
    fold = group_folds(rows, groups, FOLDS)
    out = np.full(len(rows), np.nan)
    for k in range(FOLDS):
        tr, te = fold != k, fold == k
        if not te.any() or len(set(y[tr])) < 2:
            continue
        fill = np.nan_to_num(np.nanmedian(x[tr], axis=0))
        w = None if weight is None else weight[tr]
        out[te] = _booster(_filled(x[tr], fill), y[tr], params, w).predict(_filled(x[te], fill))
    return out


def fit_trees(model: str, rows: list[dict], features: list[str], params: dict, thresholds: dict, meta: dict):
    x, y = raw_matrix(rows, features), np.array([r["label"] for r in rows])
    fill = np.nan_to_num(np.nanmedian(x, axis=0))
    booster = _booster(_filled(x, fill), y, params)
    cal = from_lightgbm(model, booster.dump_model(), features, fill, thresholds, meta)
    check = booster.predict(_filled(x[:50], fill))
    mine = cal.score([r["features"] for r in rows[:50]])
    if not np.allclose(check, mine, atol=1e-9):  # the exported trees must score as LightGBM does
        raise AssertionError(f"exported trees differ from LightGBM by {np.max(np.abs(check - mine))}")
    return cal


def travel_check(model: str, train: list[dict], groups: dict[str, str], features: list[str], family: str) -> dict:
    """How `family` travels to a language it never saw, on the train side only: for each language L of
    TRAVEL_LANGS, fit on the train rows of every other language (English, non-speech, generated clips
    whose speech is not L's) with the family's own protocol and train out-of-fold threshold, then score
    L's train rows. The grounded rows of L at or above that flag threshold, per language and pooled."""
    out: dict = {"languages": {}}
    for lang in TRAVEL_LANGS:
        if not any(r.get("lang") == lang for r in train):
            continue
        lside = {r["id"]: "val" if r.get("lang") == lang else "train" for r in train}
        if family == "logistic":
            fitted = fit_on_split(model, train, lside, groups, features)
        else:
            fitted = fit_family_on_split(model, train, lside, groups, features, families=(family,))[0]
        y = np.array([r["label"] for r in train if lside[r["id"]] == "val"])
        flagged = fitted.val_scores[y == 0] >= fitted.calibration.thresholds["flag"]
        out["languages"][lang] = {"grounded": int((y == 0).sum()), "grounded_flagged": int(flagged.sum())}
    out["grounded"] = sum(m["grounded"] for m in out["languages"].values())
    out["grounded_flagged"] = sum(m["grounded_flagged"] for m in out["languages"].values())
    return out


def fit_family_on_split(model: str, rows: list[dict], side: dict[str, str], groups: dict[str, str],
                        features: list[str], families: tuple[str, ...] = ("logistic", *GRID),
                        travel: bool = False) -> tuple[Fitted, dict]:
    """Every family's grouped-CV quality on train; the logistic model unless trees win by TREES_MARGIN
    and, with `travel` (a multilingual model), flag no more grounded rows than logistic in
    `travel_check` (pooled over TRAVEL_LANGS). The winner is refit on all of train, thresholds from its
    own out-of-fold scores."""
    train = [r for r in rows if side[r["id"]] == "train"]
    val = [r for r in rows if side[r["id"]] == "val"]
    features = usable_features(train, features)
    y_train = np.array([r["label"] for r in train])
    cv: dict[str, float] = {}
    oofs: dict[str, np.ndarray] = {}
    l2 = None
    for fam in families:
        if fam == "logistic":
            l2, oofs[fam] = choose_l2(model, train, features, groups)
        else:
            oofs[fam] = trees_oof(train, features, groups, GRID[fam])
        cv[fam] = evaluation.selection_quality(y_train, oofs[fam])
    best_trees = max((f for f in cv if f != "logistic"), key=cv.get, default=None)
    chosen = "logistic"
    if best_trees and ("logistic" not in cv or cv[best_trees] >= cv["logistic"] + TREES_MARGIN):
        chosen = best_trees
    travelled = None
    if travel and chosen != "logistic" and "logistic" in cv:
        travelled = {fam: travel_check(model, train, groups, features, fam) for fam in ("logistic", chosen)}
        if travelled[chosen]["grounded_flagged"] > travelled["logistic"]["grounded_flagged"]:
            chosen = "logistic"
    thresholds = thresholds_from(y_train, oofs[chosen])
    report = {"family": chosen, "cv_quality": cv, "n_features": len(features), "train_segments": len(train),
              "val_segments": len(val), "train_clips": len({r["id"] for r in train}),
              "val_clips": len({r["id"] for r in val}),
              "train_oof": evaluation.summary(y_train[np.isfinite(oofs[chosen])], oofs[chosen][np.isfinite(oofs[chosen])]),
              "thresholds": thresholds, "threshold_rule": "train out-of-fold (guard.calibrate.thresholds_from)",
              "selection": f"grouped {FOLDS}-fold CV on train, AUROC + mean TPR at 1%/5% FPR; trees ship only "
                           f"when they beat logistic by >= {TREES_MARGIN}"
                           + (" and flag no more grounded segments than logistic with each of "
                              f"{', '.join(TRAVEL_LANGS)} held out of train in turn" if travel else "")}
    if travelled is not None:
        report["travel"] = travelled
    meta = {"split": "guard.calibrate.split (by recording)", "fit": report}
    if chosen == "logistic":
        cal = _fit(model, train, features, l2)
        cal.thresholds = thresholds
        report["l2"] = l2
        cal.meta = meta
    else:
        cal = fit_trees(model, train, features, GRID[chosen], thresholds, meta)
        report["params"] = {**COMMON, **GRID[chosen]}
    p_val = cal.score([r["features"] for r in val])
    report["val"] = evaluation.summary(np.array([r["label"] for r in val]), p_val)
    return Fitted(cal, p_val, report), oofs

"""Fit the attractor-regime score on a labelled corpus: split by clip, fit on train, choose thresholds
on train out-of-fold scores, and report on validation.

The split keeps every mixture on the same side as the standalone speech clip it was built from
(so a prompt heard in training is never "unseen" in validation), is stratified by kind/category,
and is seeded. Regularisation strength comes from grouped cross-validation on the train side only.
"""
from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from guard import evaluation
from guard.score import Calibration, fit

SEED = 20261122
VAL_SHARE = 0.4
CONFIDENCE_FEATURES = ["conf.avg_logprob", "conf.no_speech_prob", "conf.compression_ratio", "vad.segment_share",
                       "seg.duration"]
L2_GRID = (3.0, 10.0, 30.0, 100.0, 300.0)
FLAG_FPR = 0.01  # default flag threshold: at most 1% of grounded train segments flagged (out of fold)
SUPPRESS_FPR = 0.005  # suppression is stricter


def transform_for(name: str) -> str:
    """Log for positive scale-like quantities, logit for probabilities and shares, identity otherwise."""
    leaf = name.rsplit(".", 1)[-1]
    if name in ("conf.no_speech_prob",) or leaf in ("top1_share", "eff_rank_frac", "min_head", "pad_mass",
                                                     "nonspeech_mass", "span_mass", "concentration"):
        return "logit"
    if name in ("conf.compression_ratio", "seg.duration", "seg.n_tokens", "seg.words", "seg.words_per_second",
                "seg.chars_per_second", "text.compression") or leaf in ("eff_rank", "stable_rank", "kirchhoff"):
        return "log"
    return "identity"


def groups_of(clips: dict[str, dict]) -> dict[str, str]:
    """Clip id -> group id: a mixture joins the group of the speech clips it contains."""
    parent = {cid: cid for cid in clips}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for cid, clip in clips.items():
        for part in clip.get("parts") or []:
            src = part.get("from")
            if src in clips and clips[src]["kind"] == "speech":
                parent[find(src)] = find(cid)
    return {cid: find(cid) for cid in clips}


def split(clips: dict[str, dict], seed: int = SEED, val_share: float = VAL_SHARE) -> dict[str, str]:
    """Clip id -> 'train' | 'val', by group, stratified by the group's most common kind/category."""
    group = groups_of(clips)
    members: dict[str, list[str]] = defaultdict(list)
    for cid, g in group.items():
        members[g].append(cid)
    strata: dict[str, list[str]] = defaultdict(list)
    for g, ids in members.items():
        keys = [f"{clips[c]['kind']}/{clips[c].get('category')}" for c in ids]
        strata[max(sorted(set(keys)), key=keys.count)].append(g)
    rng = random.Random(seed)
    side = {}
    for key in sorted(strata):
        gs = sorted(strata[key], key=lambda g: hashlib.sha256(g.encode()).hexdigest())
        rng.shuffle(gs)
        total = sum(len(members[g]) for g in gs)
        in_val = 0
        for g in gs:
            to_val = in_val + len(members[g]) / 2 <= val_share * total
            in_val += len(members[g]) if to_val else 0
            for cid in members[g]:
                side[cid] = "val" if to_val else "train"
    return side


@dataclass
class Fitted:
    calibration: Calibration
    val_scores: np.ndarray
    report: dict


def usable_features(rows: list[dict], candidates: list[str]) -> list[str]:
    keep = []
    for f in candidates:
        v = np.array([r["features"].get(f, np.nan) for r in rows], dtype=np.float64)
        if np.isfinite(v).mean() > 0.95 and np.nanstd(v) > 1e-9:
            keep.append(f)
    return keep


def _fit(model: str, rows: list[dict], features: list[str], l2: float, transforms: dict[str, str] | None = None
         ) -> Calibration:
    return fit(model, [r["features"] for r in rows], np.array([r["label"] for r in rows]), features,
               {f: transform_for(f) for f in features} if transforms is None else transforms, l2=l2)


def group_folds(rows: list[dict], groups: dict[str, str], folds: int) -> np.ndarray:
    fold_of = {g: int(hashlib.sha256(g.encode()).hexdigest(), 16) % folds for g in set(groups.values())}
    return np.array([fold_of[groups[r["id"]]] for r in rows])


def out_of_fold(model: str, rows: list[dict], features: list[str], groups: dict[str, str], l2: float,
                folds: int = 5, transforms: dict[str, str] | None = None) -> np.ndarray:
    """Grouped k-fold probabilities on `rows`: each row scored by a fit that never saw its group."""
    fold = group_folds(rows, groups, folds)
    scores = np.full(len(rows), np.nan)
    for k in range(folds):
        train = [r for r, f in zip(rows, fold) if f != k]
        idx = np.flatnonzero(fold == k)
        if len({r["label"] for r in train}) < 2 or not len(idx):
            continue
        scores[idx] = _fit(model, train, features, l2, transforms).score([rows[i]["features"] for i in idx])
    return scores


def choose_l2(model: str, rows: list[dict], features: list[str], groups: dict[str, str], folds: int = 5,
              transforms: dict[str, str] | None = None) -> tuple[float, np.ndarray]:
    """Grouped k-fold on the train side: the L2 strength with the best AUROC + mean TPR at 1% and 5% FPR,
    and that strength's out-of-fold scores."""
    y = np.array([r["label"] for r in rows])
    best, best_l2, best_oof = -np.inf, L2_GRID[0], np.zeros(len(rows))
    for l2 in L2_GRID:
        scores = out_of_fold(model, rows, features, groups, l2, folds, transforms)
        quality = evaluation.selection_quality(y, scores)
        if quality > best:
            best, best_l2, best_oof = quality, l2, scores
    return best_l2, best_oof


def thresholds_from(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Flag where FLAG_FPR of the grounded rows score above, suppress where SUPPRESS_FPR do (never
    below flag). Called with train out-of-fold scores: validation never sets a threshold."""
    ok = np.isfinite(scores)
    y, scores = y[ok], scores[ok]
    flag_t = float(np.nextafter(evaluation.threshold_at_fpr(y, scores, FLAG_FPR), 1.0))
    sup_t = float(np.nextafter(evaluation.threshold_at_fpr(y, scores, SUPPRESS_FPR), 1.0))
    flag_t = min(max(flag_t, 0.0), 1.0)
    return {"flag": flag_t, "suppress": min(max(sup_t, flag_t), 1.0)}


def fit_on_split(model: str, rows: list[dict], side: dict[str, str], groups: dict[str, str],
                 features: list[str], transforms: dict[str, str] | None = None) -> Fitted:
    """Fit on train rows, pick thresholds on train out-of-fold scores, report validation metrics.

    `transforms` (feature -> name in guard.score.TRANSFORMS) replaces `transform_for`."""
    train = [r for r in rows if side[r["id"]] == "train"]
    val = [r for r in rows if side[r["id"]] == "val"]
    features = usable_features(train, features)
    l2, oof = choose_l2(model, train, features, groups, transforms=transforms)
    cal = _fit(model, train, features, l2, transforms)
    y_train = np.array([r["label"] for r in train])
    cal.thresholds = thresholds_from(y_train, oof)
    y_val = np.array([r["label"] for r in val])
    p_val = cal.score([r["features"] for r in val])
    report = {"l2": l2, "n_features": len(features), "train_segments": len(train), "val_segments": len(val),
              "train_clips": len({r["id"] for r in train}), "val_clips": len({r["id"] for r in val}),
              "train_oof": evaluation.summary(y_train[np.isfinite(oof)], oof[np.isfinite(oof)]),
              "val": evaluation.summary(y_val, p_val), "thresholds": cal.thresholds,
              "threshold_rule": f"train out-of-fold: <= {FLAG_FPR:.1%} of grounded segments flagged "
                                f"(suppress {SUPPRESS_FPR:.1%})"}
    cal.meta = {"split": {"seed": SEED, "val_share": VAL_SHARE, "grouping": "mixtures with their speech clips",
                          "stratified_by": "kind/category"}, "fit": report}
    return Fitted(cal, p_val, report)

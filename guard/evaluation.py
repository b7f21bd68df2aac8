"""Detection metrics with the corpus scorer's conventions: AUROC with tied ranks, TPR at a max FPR."""
from __future__ import annotations

import numpy as np


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    y, s = np.asarray(y), np.asarray(s, dtype=np.float64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties, vectorised by run boundaries
    bounds = np.flatnonzero(np.diff(sorted_s) != 0) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(s)]])
    avg = (starts + ends - 1) / 2 + 1
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_at_fpr(y: np.ndarray, s: np.ndarray, max_fpr: float) -> float:
    """The smallest threshold t such that flagging `s > t` keeps FPR <= max_fpr on these negatives."""
    neg = np.sort(np.asarray(s)[np.asarray(y) == 0])[::-1]
    if len(neg) == 0:
        return float("-inf")
    allowed = int(np.floor(max_fpr * len(neg)))
    return float(neg[allowed]) if allowed < len(neg) else float("-inf")


def tpr_at_fpr(y: np.ndarray, s: np.ndarray, max_fpr: float) -> float:
    y, s = np.asarray(y), np.asarray(s)
    if (y == 1).sum() == 0 or (y == 0).sum() == 0:
        return float("nan")
    return float((s[y == 1] > threshold_at_fpr(y, s, max_fpr)).mean())


def selection_quality(y: np.ndarray, s: np.ndarray) -> float:
    """What grouped CV maximises when it chooses a regularisation, a feature set or a model family:
    AUROC plus the mean TPR at 1% and 5% FPR, over the rows that have a score."""
    y, s = np.asarray(y), np.asarray(s)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    return auroc(y, s) + (tpr_at_fpr(y, s, 0.01) + tpr_at_fpr(y, s, 0.05)) / 2


def summary(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    y = np.asarray(y)
    return {"n": int(len(y)), "hallucinated": int(y.sum()), "auroc": auroc(y, s),
            "tpr_at_fpr_1pct": tpr_at_fpr(y, s, 0.01), "tpr_at_fpr_5pct": tpr_at_fpr(y, s, 0.05)}

"""The attractor-regime score as gradient-boosted trees, evaluated with numpy alone.

Fitted offline (benchmarks/detection.py, LightGBM) and shipped as JSON: every tree's nodes in flat
arrays. Missing features take the train median (`fill`) before the trees see them, so no tree needs
a missing-value rule. The score is sigmoid(base + sum of the trees' leaf values).

`reasons` are exact per-feature contributions (Saabas): along each tree's path, the change in node
value at a split is credited to that split's feature. Contributions plus the bias (base + the roots'
values) sum to the logit, so the reasons a verdict carries are the terms that made the score.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from guard.errors import ModelError
from guard.results import Reason

KIND = "trees"
_ARRAYS = ("feature", "threshold", "left", "right", "value")


@dataclass
class TreeCalibration:
    model: str
    features: list[str]
    fill: np.ndarray          # [k] value used for a missing or non-finite feature
    feature: np.ndarray       # [nodes] split feature index; -1 at a leaf
    threshold: np.ndarray     # [nodes] go left when x <= threshold
    left: np.ndarray          # [nodes] child indices (a leaf points at itself)
    right: np.ndarray
    value: np.ndarray         # [nodes] leaf value, or the internal node's mean value (Saabas)
    roots: np.ndarray         # [trees]
    base: float
    thresholds: dict[str, float]
    meta: dict = field(default_factory=dict)

    def uses(self, prefix: str) -> bool:
        used = {self.features[j] for j in np.unique(self.feature[self.feature >= 0])}
        return any(f.startswith(prefix) for f in used)

    def matrix(self, rows: list[dict[str, float]]) -> np.ndarray:
        x = np.array([[r.get(f, np.nan) for f in self.features] for r in rows], dtype=np.float64).reshape(
            len(rows), len(self.features))
        bad = ~np.isfinite(x)
        x[bad] = np.broadcast_to(self.fill, x.shape)[bad]
        return x

    def _paths(self, x: np.ndarray) -> list[np.ndarray]:
        """Node index per (row, tree) at each depth, root first, until every path sits on a leaf."""
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        rows = np.arange(len(x))[:, None]
        steps = [node]
        while True:
            f = self.feature[node]
            inner = f >= 0
            if not inner.any():
                return steps
            v = x[rows, np.where(inner, f, 0)]
            node = np.where(inner, np.where(v <= self.threshold[node], self.left[node], self.right[node]), node)
            steps.append(node)

    def logits(self, rows: list[dict[str, float]]) -> np.ndarray:
        if not rows:
            return np.zeros(0)
        return self.base + self.value[self._paths(self.matrix(rows))[-1]].sum(axis=1)

    def score(self, rows: list[dict[str, float]]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(rows)))

    def contributions(self, rows: list[dict[str, float]]) -> tuple[np.ndarray, float | np.ndarray]:
        """[n, k] per-feature contributions in logits, and the bias; bias + row sum = the logit."""
        x = self.matrix(rows)
        steps = self._paths(x)
        out = np.zeros((len(x), len(self.features)))
        r = np.repeat(np.arange(len(x))[:, None], len(self.roots), axis=1)
        for parent, child in zip(steps, steps[1:]):
            moved = parent != child
            np.add.at(out, (r[moved], self.feature[parent][moved]), (self.value[child] - self.value[parent])[moved])
        return out, self.base + float(self.value[self.roots].sum())

    def reasons(self, row: dict[str, float], top: int = 3) -> list[Reason]:
        """The features that pushed this score up the most (contribution in logits)."""
        contrib = self.contributions([row])[0][0]
        order = np.argsort(-contrib)[:top]
        return [Reason(self.features[j], float(row.get(self.features[j], np.nan)), float(contrib[j]))
                for j in order if contrib[j] > 0]

    def to_json(self) -> dict:
        return {"kind": KIND, "model": self.model, "features": self.features, "fill": self.fill.tolist(),
                **{k: getattr(self, k).tolist() for k in _ARRAYS}, "roots": self.roots.tolist(),
                "base": self.base, "thresholds": self.thresholds, "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> "TreeCalibration":
        k = len(d["features"])
        try:
            fill = np.asarray(d["fill"], dtype=np.float64)
            arrays = {key: np.asarray(d[key], dtype=np.int64 if key in ("feature", "left", "right") else np.float64)
                      for key in _ARRAYS}
            roots = np.asarray(d["roots"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"tree calibration file is unreadable: {e}") from None
        n = len(arrays["value"])
        if fill.shape != (k,) or any(a.shape != (n,) for a in arrays.values()) or roots.ndim != 1 or not len(roots):
            raise ModelError("tree calibration file is inconsistent: node arrays differ in length")
        f, left, right = arrays["feature"], arrays["left"], arrays["right"]
        inner = f >= 0
        if (f >= k).any() or (roots < 0).any() or (roots >= n).any() or \
                ((left < 0) | (left >= n) | (right < 0) | (right >= n)).any() or \
                (inner & ((left <= np.arange(n)) | (right <= np.arange(n)))).any():
            raise ModelError("tree calibration file is inconsistent: a node points outside its tree")
        return cls(d["model"], list(d["features"]), fill, f, arrays["threshold"], left, right, arrays["value"], roots,
                   float(d["base"]), {key: float(v) for key, v in d["thresholds"].items()}, d.get("meta", {}))


def from_lightgbm(model: str, dump: dict, features: list[str], fill: np.ndarray, thresholds: dict[str, float],
                  meta: dict | None = None) -> TreeCalibration:
    """A LightGBM binary model's `dump_model()` (trained on `features`, with NaNs filled by `fill`
    and use_missing=False) -> flat arrays, children after their parent."""
    feature, threshold, left, right, value, roots = [], [], [], [], [], []

    def add(node: dict) -> int:
        i = len(value)
        for a in (feature, threshold, left, right, value):
            a.append(0)
        if "leaf_index" in node or "split_index" not in node:
            feature[i], threshold[i], left[i], right[i] = -1, 0.0, i, i
            value[i] = float(node.get("leaf_value", 0.0))
            return i
        if node.get("decision_type", "<=") != "<=":
            raise ModelError(f"unsupported LightGBM split {node.get('decision_type')!r} (numeric <= only)")
        feature[i], threshold[i] = int(node["split_feature"]), float(node["threshold"])
        value[i] = float(node["internal_value"])
        left[i] = add(node["left_child"])
        right[i] = add(node["right_child"])
        return i

    for tree in dump["tree_info"]:
        roots.append(add(tree["tree_structure"]))
    return TreeCalibration(model, list(features), np.asarray(fill, dtype=np.float64), np.array(feature, np.int64),
                           np.array(threshold, np.float64), np.array(left, np.int64), np.array(right, np.int64),
                           np.array(value, np.float64), np.array(roots, np.int64), 0.0, dict(thresholds), meta or {})

"""The attractor-regime score: a calibrated logistic model over the signature, per Whisper model.

Small and explainable on purpose: standardised (and where needed log- or logit-transformed)
features z, one weight each (logit = sum_j a_j z_j + c), L2-regularised, fitted on a train split by
clip. A quadratic variant (a_j z_j + b_j z_j^2) is supported; on the DEV corpus grouped CV on the
train side preferred the linear model (AUROC 0.976 vs 0.971), so the shipped calibrations are linear. The coefficients ship inside the
package as JSON (`guard/calibration/<model>.json`); `whisper-guard calibrate` writes a new one
from a user's labelled corpus. Each score comes with its largest contributions (the reason).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from guard.errors import ModelError
from guard.results import Reason

if TYPE_CHECKING:
    from guard.score_trees import TreeCalibration

TRANSFORMS = {
    "identity": lambda x: x,
    "log": lambda x: np.log(np.maximum(x, 1e-6)),
    "logit": lambda x: np.log(np.clip(x, 1e-6, 1 - 1e-6) / (1 - np.clip(x, 1e-6, 1 - 1e-6))),
}


@dataclass
class Calibration:
    model: str
    features: list[str]
    transforms: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    thresholds: dict[str, float]
    meta: dict = field(default_factory=dict)
    quadratic: bool = False  # when True, coef holds [linear..., quadratic...]

    def uses(self, prefix: str) -> bool:
        """Whether any feature of the score starts with `prefix` (optional features are computed only then)."""
        return any(f.startswith(prefix) for f in self.features)

    def design(self, rows: list[dict[str, float]]) -> np.ndarray:
        """Raw feature dicts -> standardised design matrix [n, k] (missing features count as the mean)."""
        x = np.array([[r.get(f, np.nan) for f in self.features] for r in rows], dtype=np.float64).reshape(
            len(rows), len(self.features))
        for j, t in enumerate(self.transforms):
            x[:, j] = TRANSFORMS[t](x[:, j])
        z = (x - self.mean) / self.scale
        return np.nan_to_num(z, nan=0.0, posinf=8.0, neginf=-8.0).clip(-8, 8)

    def expand(self, z: np.ndarray) -> np.ndarray:
        return np.hstack([z, z**2]) if self.quadratic else z

    def logits(self, rows: list[dict[str, float]]) -> np.ndarray:
        return self.expand(self.design(rows)) @ self.coef + self.intercept

    def contributions(self, z: np.ndarray) -> np.ndarray:
        """Per-feature push in logits: a_j z_j (+ b_j z_j^2)."""
        k = len(self.features)
        return z * self.coef[:k] + (z**2 * self.coef[k:] if self.quadratic else 0.0)

    def score(self, rows: list[dict[str, float]]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(rows)))

    def reasons(self, row: dict[str, float], top: int = 3) -> list[Reason]:
        """The features that pushed this score up the most (contribution in logits)."""
        contrib = self.contributions(self.design([row])[0])
        order = np.argsort(-contrib)[:top]
        return [Reason(self.features[j], float(row.get(self.features[j], np.nan)), float(contrib[j]))
                for j in order if contrib[j] > 0]

    def to_json(self) -> dict:
        return {"model": self.model, "features": self.features, "transforms": self.transforms,
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept, "thresholds": self.thresholds, "quadratic": self.quadratic,
                "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> "Calibration":
        k = len(d["features"])
        quadratic = bool(d.get("quadratic", False))
        arrays = [np.asarray(d[key], dtype=np.float64) for key in ("mean", "scale", "coef")]
        if arrays[0].shape != (k,) or arrays[1].shape != (k,) or arrays[2].shape != ((2 * k,) if quadratic else (k,)) \
                or len(d["transforms"]) != k:
            raise ModelError("calibration file is inconsistent: features, transforms, mean, scale, coef differ in length")
        if any(t not in TRANSFORMS for t in d["transforms"]):
            raise ModelError(f"calibration file names an unknown transform; known: {', '.join(TRANSFORMS)}")
        return cls(d["model"], list(d["features"]), list(d["transforms"]), *arrays, float(d["intercept"]),
                   {k: float(v) for k, v in d["thresholds"].items()}, d.get("meta", {}), quadratic)


def load(model: str, path: Path | None = None) -> "Calibration | TreeCalibration":
    """The calibration for `model`: a given file, or the one shipped in the package (a logistic
    calibration, or gradient-boosted trees: guard.score_trees)."""
    try:
        if path is not None:
            data = json.loads(Path(path).read_text())
        else:
            data = json.loads(resources.files("guard.calibration").joinpath(f"{model}.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"no calibration for model {model!r}: run `whisper-guard calibrate --model {model} ...` "
                         "and pass --calibration") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"calibration for {model!r} is unreadable: {e}") from None
    if isinstance(data, dict) and data.get("kind") == "trees":
        from guard.score_trees import TreeCalibration

        return TreeCalibration.from_json(data)
    return Calibration.from_json(data)


def neutral(model: str) -> Calibration:
    """A calibration with no weights (every score 0.5): only for extracting features to fit one."""
    empty = np.zeros(0)
    return Calibration(model, [], [], empty, empty + 1, empty, 0.0, {"flag": 1.0, "suppress": 1.0},
                       {"neutral": True}, quadratic=False)


# ---------------------------------------------------------------- fitting
def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float = 1.0, weights: np.ndarray | None = None,
                 iters: int = 100, unpenalised: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method (IRLS); the intercept is not penalised,
    nor are the columns marked in `unpenalised` (a boolean mask over z's columns)."""
    n, k = z.shape
    w = np.ones(n) if weights is None else weights
    x = np.hstack([z, np.ones((n, 1))])
    beta = np.zeros(k + 1)
    penalty = np.full(k + 1, l2)
    penalty[-1] = 0.0
    if unpenalised is not None:
        penalty[:-1][np.asarray(unpenalised, dtype=bool)] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -30, 30)))
        grad = x.T @ (w * (p - y)) + penalty * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def standardised(model: str, rows: list[dict[str, float]], features: list[str], transforms: dict[str, str],
                 quadratic: bool = False) -> Calibration:
    """A calibration with the features' transforms and standardisation (mean, scale) taken from
    `rows`, and no weights yet: `design` on it gives the matrix a fit runs on."""
    tr = [transforms.get(f, "identity") for f in features]
    x = np.array([[r.get(f, np.nan) for f in features] for r in rows], dtype=np.float64).reshape(
        len(rows), len(features))
    for j, t in enumerate(tr):
        x[:, j] = TRANSFORMS[t](x[:, j])
    mean = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    scale[~np.isfinite(scale) | (scale < 1e-9)] = 1.0
    mean[~np.isfinite(mean)] = 0.0
    k = len(features) * (2 if quadratic else 1)
    return Calibration(model, list(features), tr, mean, scale, np.zeros(k), 0.0, {"flag": 0.5, "suppress": 0.5},
                       quadratic=quadratic)


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-row weights that give both classes the same total weight (summing to len(y))."""
    y = np.asarray(y, dtype=np.float64)
    pos, neg = max(1.0, y.sum()), max(1.0, len(y) - y.sum())
    return np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * neg))


def fit(model: str, rows: list[dict[str, float]], labels: np.ndarray, features: list[str],
        transforms: dict[str, str], l2: float = 1.0, quadratic: bool = False) -> Calibration:
    """Fit a calibration on feature dicts with 0/1 labels (balanced class weights)."""
    cal = standardised(model, rows, features, transforms, quadratic)
    y = labels.astype(np.float64)
    cal.coef, cal.intercept = fit_logistic(cal.expand(cal.design(rows)), y, l2=l2, weights=balanced_weights(y))
    return cal

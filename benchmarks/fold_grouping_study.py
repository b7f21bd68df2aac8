"""How much did the hard cases' own-group CV folds flatter the fit, and would weighting DEV rows help?

    python benchmarks/fold_grouping_study.py --model tiny.en [--hardcases ~/.cache/whisper-guard/hardcases]

On detection.py's cached population (nothing is extracted), trees 15 leaves x 500 (the family both
models shipped in round 8 / 7) over the shipped feature set (signature v2 without encoder geometry),
grouped 5-fold out-of-fold on train, four ways:

  own groups      every hard case its own CV group (detection.py before the fix)
  recording       each hard case in its recording's group (hardcases.join_recording_groups, as shipped)
  recording, DEV x3 / x8   the same, DEV train rows weighted 3x / 8x against the hard cases

Reported on train only: the CV quality detection.py maximises (all train rows), and AUROC / TPR at 1%
FPR on the DEV train rows, on those that hold speech and on the hard cases. Writes
benchmarks/results/fold-grouping-<model>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import detection  # noqa: E402
import families  # noqa: E402
from guard import evaluation  # noqa: E402
from guard.calibrate import usable_features  # noqa: E402
from guard.corpus import bench_dir  # noqa: E402

PARAMS = families.GRID["trees 15 leaves x 500"]
VARIANTS = (("own groups", False, 1.0), ("recording", True, 1.0), ("recording, DEV x3", True, 3.0),
            ("recording, DEV x8", True, 8.0))


def study(model: str, corpus: Path, cache: Path, hardcases: Path, hc_cache: Path) -> dict:
    rows, hc_rows, _, side, groups = detection.population(model, corpus, cache, hardcases, hc_cache)
    own = {**groups, **{r["id"]: r["id"] for r in hc_rows}}
    train = [r for r in rows + hc_rows if side[r["id"]] == "train"]
    features = sorted({k for r in rows for k in r["features"]
                       if not k.startswith(("baseline.", "encoder.output."))})
    features = usable_features(train, features)
    hc_ids = {r["id"] for r in hc_rows}
    dev = np.array([r["id"] not in hc_ids for r in train])
    masks = {"DEV train rows": dev, "DEV train, holds speech": dev & np.array([detection.holds_speech(r) for r in train]),
             "hard cases": ~dev}
    y = np.array([r["label"] for r in train])
    out = {"model": model, "train_rows": len(train), "features": len(features), "variants": {}}
    for name, honest, dev_weight in VARIANTS:
        oof = families.trees_oof(train, features, groups if honest else own, PARAMS, np.where(dev, dev_weight, 1.0))
        v = {"cv_quality": evaluation.selection_quality(y, oof)}
        v.update({k: evaluation.summary(y[m], oof[m]) for k, m in masks.items()})
        out["variants"][name] = v
        print(name, json.dumps({k: (round(x, 4) if isinstance(x, float) else
                                    (round(x["auroc"], 4), round(x["tpr_at_fpr_1pct"], 3))) for k, x in v.items()}),
              flush=True)
    return out


def markdown(o: dict) -> str:
    keys = ("DEV train rows", "DEV train, holds speech", "hard cases")
    first = o["variants"][VARIANTS[0][0]]
    lines = [f"# CV folds for the hard cases, {o['model']} (trees 15 leaves x 500, grouped 5-fold out-of-fold on train)", "",
             f"{o['train_rows']} train rows, {o['features']} features. AUROC / TPR at 1% FPR of the out-of-fold scores.", "",
             "| variant | CV quality | " + " | ".join(f"{k} ({first[k]['n']}, {first[k]['hallucinated']})" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for name, v in o["variants"].items():
        lines.append(f"| {name} | {v['cv_quality']:.4f} | " +
                     " | ".join(f"{v[k]['auroc']:.4f} / {v[k]['tpr_at_fpr_1pct']:.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=bench_dir())
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--hardcases", type=Path, default=Path.home() / ".cache" / "whisper-guard" / "hardcases")
    a = ap.parse_args(argv)
    np.seterr(all="ignore")
    cache = detection.CACHE_DIR / f"{a.model}-{detection.FEATURE_SET}.jsonl"
    o = study(a.model, a.corpus, cache, a.hardcases, a.hardcases / f"{a.model}-{detection.FEATURE_SET}.jsonl")
    detection.RESULTS.mkdir(parents=True, exist_ok=True)
    (detection.RESULTS / f"fold-grouping-{a.model}.json").write_text(json.dumps(o, indent=1))
    md = markdown(o)
    (detection.RESULTS / f"fold-grouping-{a.model}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

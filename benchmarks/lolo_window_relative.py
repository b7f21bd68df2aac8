"""Issue 10 item 5: do window-relative token statistics make base's calibration travel to a new language?

    python benchmarks/lolo_window_relative.py [--model base]

Token log-probs and entropies shift with the language; a segment's statistic minus the median of
the same statistic over its window's segments does not, wherever a window holds more than one
segment (0 where it holds one). On the cached DEV extraction (`detection.py`'s cache; nothing is
extracted here) this compares the shipped feature set (signature v2 without encoder geometry) with
the same set plus those relative features:

  cv           grouped 5-fold CV on train: the quality `guard.calibrate.choose_l2` maximises
  lolo-train   leave one language out on train clips only (the side that may decide): fit on the
               train side without the language, test on its train clips
  lolo-all     the same on all of DEV (`detection.leave_one_language_out`: every clip of the language
               plus the validation non-speech clips; reported, never used to decide)

Prints a Markdown table and writes benchmarks/results/lolo-window-relative-<model>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import detection  # noqa: E402
from guard import calibrate, evaluation  # noqa: E402
from guard.corpus import read_manifest  # noqa: E402

RELATIVE = ("tok.logprob_mean", "tok.entropy_mean", "tok.logprob_min", "conf.avg_logprob", "tok.argmax_agree")


def add_window_relative(rows: list[dict]) -> list[str]:
    """Add `rel.<f>`: f minus its median over the segments of the same window (0 for a lone segment)."""
    windows: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        windows[(r["id"], r["window"])].append(r)
    for segs in windows.values():
        for f in RELATIVE:
            values = np.array([s["features"].get(f, np.nan) for s in segs], float)
            median = np.nanmedian(values) if np.isfinite(values).any() else np.nan
            for s, v in zip(segs, values):
                s["features"][f"rel.{f}"] = float(v - median) if len(segs) > 1 else 0.0
    return [f"rel.{f}" for f in RELATIVE]


def cv_quality(model: str, train: list[dict], features: list[str], groups: dict[str, str]) -> dict:
    features = calibrate.usable_features(train, features)
    l2, oof = calibrate.choose_l2(model, train, features, groups)
    quality = evaluation.selection_quality(np.array([r["label"] for r in train]), oof)
    return {"l2": l2, "quality": float(quality), "n_features": len(features)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="base")
    p.add_argument("--out", type=Path, default=detection.RESULTS)
    a = p.parse_args(argv)
    np.seterr(all="ignore")
    cache = detection.CACHE_DIR / f"{a.model}-{detection.FEATURE_SET}.jsonl"
    if not cache.exists():
        print(f"no DEV extraction at {cache}: run benchmarks/detection.py --model {a.model} first", file=sys.stderr)
        return 2
    clips = {c["id"]: c for c in read_manifest(detection.bench_dir() / "manifest.jsonl")}
    rows = detection.load_rows(cache, clips)
    side, groups = calibrate.split(clips), calibrate.groups_of(clips)
    relative = add_window_relative(rows)
    shipped = sorted({k for r in rows for k in r["features"]
                      if not k.startswith(("baseline.", "encoder.output.", "rel."))})
    variants = {"shipped feature set": shipped, "shipped + window-relative token statistics": shipped + relative}
    train = [r for r in rows if side[r["id"]] == "train"]
    train_side = {r["id"]: "train" for r in train}
    out: dict = {"model": a.model, "relative_features": relative, "variants": {}}
    for name, features in variants.items():
        res = {"cv": cv_quality(a.model, train, features, groups),
               "lolo_train": detection.leave_one_language_out(a.model, train, train_side, groups, features),
               "lolo_all": detection.leave_one_language_out(a.model, rows, side, groups, features)}
        out["variants"][name] = res
        print(f"{name}: cv {res['cv']['quality']:.4f}", file=sys.stderr, flush=True)
    langs = list(next(iter(out["variants"].values()))["lolo_all"])
    cell = lambda v: f"{v['grounded_flagged']}/{v['grounded']} ({v['auroc_in_language']:.3f})"  # noqa: E731
    lines = [f"# Leave one language out with window-relative token statistics ({a.model})", "",
             "Grounded segments of the left-out language flagged at the fit's default threshold (AUROC within "
             "the language). CV: grouped 5-fold on train (AUROC + mean TPR at 1% and 5% FPR).", "",
             "| variant | CV quality | " + " | ".join(f"{lang} train-only" for lang in langs) + " | "
             + " | ".join(f"{lang} all DEV" for lang in langs) + " |",
             "|---|---:|" + "---|" * (2 * len(langs))]
    for name, res in out["variants"].items():
        lines.append(f"| {name} | {res['cv']['quality']:.4f} | "
                     + " | ".join(cell(res["lolo_train"][lang]) for lang in langs) + " | "
                     + " | ".join(cell(res["lolo_all"][lang]) for lang in langs) + " |")
    md = "\n".join(lines) + "\n"
    print(md)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"lolo-window-relative-{a.model}"
    Path(f"{stem}.json").write_text(json.dumps(out, indent=1, default=float))  # not with_suffix: a model name may hold a dot
    Path(f"{stem}.md").write_text(md)
    print(f"wrote {stem}.json/.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

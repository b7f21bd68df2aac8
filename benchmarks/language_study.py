"""Does the language-detection confidence (`lang.prob`, `lang.margin`) pay as a feature? (issue 10, a base round)

    python benchmarks/language_study.py --model base [--hardcases ~/.cache/whisper-guard/hardcases]

The shipped candidate's protocol (benchmarks/families.py: family by grouped CV on train, the travel check,
thresholds from train out-of-fold scores) fitted on the same rows without the two features, with
`lang.prob` alone, and with both (no encoder geometry in any arm, as shipped). Reported on DEV validation only: all segments and clips
that hold speech (AUROC / TPR at 1% and 5% FPR), leave one language out (detection.py's protocol), and
the validation segments that cross the 1% FPR threshold one way or the other between the first arm and
the last. Caches extracted before the
feature existed need benchmarks/language_backfill.py first. Writes
benchmarks/results/language-study-<model><suffix>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection  # noqa: E402
import families  # noqa: E402
from guard import evaluation  # noqa: E402
from guard.corpus import bench_dir  # noqa: E402

FEATURES = ("lang.prob", "lang.margin")
WITHOUT, WITH = "without lang.*", "with lang.prob + lang.margin"
STRATA = ("all", "clips that hold speech (speech + mixture)")


def study(model: str, corpus: Path, cache: Path, hardcases: Path | None, hc_cache: Path | None) -> dict:
    rows, hc_rows, _, side, groups = detection.population(model, corpus, cache, hardcases, hc_cache)
    fit_rows = rows + [r for r in hc_rows if side[r["id"]] == "train"]
    have = np.mean([all(f in r["features"] for f in FEATURES) for r in fit_rows])
    if have < 0.95:
        raise SystemExit(f"{' and '.join(FEATURES)} are on {have:.1%} of the fit's rows: run "
                         "benchmarks/language_backfill.py first")
    feats = sorted({k for r in rows for k in r["features"] if not k.startswith(("baseline.", "encoder.output."))})
    val = [r for r in rows if side[r["id"]] == "val"]
    y = np.array([r["label"] for r in val])
    masks = detection.strata(val)
    out: dict = {"model": model, "fit_segments": len(fit_rows), "hardcase_train_segments": len(fit_rows) - len(rows),
                 "val_segments": len(val), "val_hallucinated": int(y.sum()), "arms": {}}
    scores = {}
    arms = {WITHOUT: [f for f in feats if f not in FEATURES], "with lang.prob": [f for f in feats if f != FEATURES[1]],
            WITH: feats}
    for arm, use in arms.items():
        fitted, _ = families.fit_family_on_split(model, fit_rows, side, groups, use, travel=not model.endswith(".en"))
        s = fitted.val_scores
        scores[arm] = s
        lolo = None if model.endswith(".en") else detection.leave_one_language_out(model, rows, side, groups, use, hc_rows)
        out["arms"][arm] = {
            "family": fitted.report["family"], "cv_quality": fitted.report["cv_quality"],
            "travel": fitted.report.get("travel"), "n_features": fitted.report["n_features"],
            **{k: evaluation.summary(y[masks[k]], s[masks[k]]) for k in STRATA},
            "leave_one_language_out": lolo}
    flips = []
    thr = {arm: evaluation.threshold_at_fpr(y, s, 0.01) for arm, s in scores.items()}
    for i, r in enumerate(val):
        if not r["label"]:
            continue
        caught = {arm: bool(scores[arm][i] > thr[arm]) for arm in (WITHOUT, WITH)}
        if caught[WITHOUT] != caught[WITH]:
            flips.append({"clip": r["id"], "text": r["text"], **{f: r["features"][f] for f in FEATURES},
                          "caught_with": caught[WITH], "score without": float(scores[WITHOUT][i]),
                          "score with": float(scores[WITH][i])})
    out["crossings_at_1pct_fpr"] = flips
    return out


def markdown(o: dict) -> str:
    lines = [f"# Language-detection confidence as a feature: {o['model']} (DEV validation)", "",
             f"{o['val_segments']} validation segments, {o['val_hallucinated']} hallucinated; fit on "
             f"{o['fit_segments']} train segments ({o['hardcase_train_segments']} of them generated hard cases).", "",
             "| arm | family | CV quality (chosen) | all: AUROC / TPR@1% / TPR@5% | holds speech: AUROC / TPR@1% / TPR@5% "
             "| leave one language out: grounded flagged (es, fr, it, nl) |", "|---|---|---|---|---|---|"]
    for arm, a in o["arms"].items():
        cell = lambda m: f"{m['auroc']:.4f} / {m['tpr_at_fpr_1pct']:.3f} / {m['tpr_at_fpr_5pct']:.3f}"  # noqa: E731
        lolo = a["leave_one_language_out"]
        lo = ", ".join(f"{lang} {m['grounded_flagged']}/{m['grounded']}" for lang, m in lolo.items()) if lolo else "n/a"
        lines.append(f"| {arm} | {a['family']} | {a['cv_quality'][a['family']]:.4f} | {cell(a[STRATA[0]])} | "
                     f"{cell(a[STRATA[1]])} | {lo} |")
    lines += ["", f"Hallucinated validation segments that cross the 1% FPR threshold (each arm's own) between "
              f"'{WITHOUT}' and '{WITH}':", "",
              f"| clip | text | lang.prob | lang.margin | caught {WITH} | score {WITHOUT} / {WITH} |",
              "|---|---|---|---|---|---|"]
    for f in o["crossings_at_1pct_fpr"]:
        lines.append(f"| {f['clip']} | {f['text'][:60]} | {f['lang.prob']:.3f} | {f['lang.margin']:.3f} | "
                     f"{'yes' if f['caught_with'] else 'no'} | {f['score without']:.3f} / {f['score with']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=bench_dir())
    ap.add_argument("--model", default="base")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--hardcases", type=Path, help="add the generated hard cases' train side to both fits")
    ap.add_argument("--suffix", default="", help="appended to the output names, e.g. -dev-only")
    a = ap.parse_args(argv)
    np.seterr(all="ignore")
    cache = a.cache or detection.CACHE_DIR / f"{a.model}-{detection.FEATURE_SET}.jsonl"
    hc_cache = a.hardcases / f"{a.model}-{detection.FEATURE_SET}.jsonl" if a.hardcases else None
    o = study(a.model, a.corpus, cache, a.hardcases, hc_cache)
    detection.RESULTS.mkdir(parents=True, exist_ok=True)
    stem = detection.RESULTS / f"language-study-{a.model}{a.suffix}"
    Path(f"{stem}.json").write_text(json.dumps(o, indent=1, default=float))
    md = markdown(o)
    Path(f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Logistic and trees blended, and features for repeated text: do they beat the single family by grouped CV on
train? And what does the single family still miss on clips that hold speech? (issue 10, item 3)

    python benchmarks/ensemble_study.py --model tiny.en [--hardcases ~/.cache/whisper-guard/hardcases]

Reads benchmarks/detection.py's extraction caches (run it first) and its population: DEV rows plus the
generated hard cases' train side, the signature without encoder geometry (the shipped feature set).
Every choice is made by grouped 5-fold CV on train (pooled out-of-fold scores,
guard.evaluation.selection_quality, the criterion of every other choice in the project); validation is
reported and never chooses:
- the logistic model (L2 by CV) and each trees configuration of benchmarks/families.py, out of fold;
- each with the signature as extracted, and with repetition_features (below) added from the cached rows
  per window, from what the guard holds there at run time (how much of a segment's words another segment
  repeats, and how much more speech the best-grounded copy sits on);
- blends of the logistic model's and the best trees' out-of-fold logits, w * logistic + (1 - w) * trees
  for w = 0.25, 0.5, 0.75 (a blend of logits keeps per-feature contributions exact: each side's
  contributions scaled by its weight);
- each candidate refit on all of train and scored on DEV validation (overall and per stratum) and on the
  generated hard cases' validation side, with its thresholds from its own train out-of-fold scores, beside
  the six-feature baseline and the shipped calibration; grouped bootstrap intervals for the differences;
- the hallucinated validation segments on clips that hold speech that the CV-chosen single family does not
  flag at its 1%-FPR threshold: why the corpus rule calls them hallucinated, where they lie, what they say.
Writes benchmarks/results/ensemble-study-<model>.{json,md}.
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
from guard.calibrate import _fit, choose_l2, fit_on_split, thresholds_from, usable_features  # noqa: E402
from guard.corpus import bench_dir, read_manifest  # noqa: E402
from guard.labels import outside_speech  # noqa: E402
from guard.signature import normalise  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
EPS = 1e-12


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def blend(w: float, p_logistic: np.ndarray, p_trees: np.ndarray) -> np.ndarray:
    return sigmoid(w * logit(p_logistic) + (1 - w) * logit(p_trees))


REPEAT_SHARE = 0.5  # a segment repeats another when at least half of its distinct words are in the other
BOOTSTRAP = 2000
SEED = 20261202


def repetition_features(words: list[list[str]], speech_share: list[float]) -> list[dict[str, float]]:
    """Per segment of one window: the largest share of its distinct words found in another segment
    (`window.text.word_repeat`), and by how much the speech share under the best-grounded segment it
    repeats exceeds its own (`window.text.repeat_speech_deficit`, 0 when it repeats nothing or sits on
    the most speech). Two copies of "Deactivated.", one over 18 s of silence and one over the word, give
    the first a deficit near 1 and the second 0. (Studied here; not in the guard: CV did not support it.)"""
    sets = [set(w) for w in words]
    share = [float(x) if np.isfinite(x) else 0.0 for x in speech_share]
    out = []
    for i, si in enumerate(sets):
        best, deficit = 0.0, 0.0
        for j, sj in enumerate(sets):
            if j == i or not si or not sj:
                continue
            overlap = len(si & sj) / len(si)
            best = max(best, overlap)
            if overlap >= REPEAT_SHARE:
                deficit = max(deficit, share[j] - share[i])
        out.append({"window.text.word_repeat": best, "window.text.repeat_speech_deficit": deficit})
    return out


def add_repetition(rows: list[dict]) -> list[str]:
    """repetition_features from cached rows, per window, from what the guard has there at run time (the
    window's segments, their normalised words, Silero's speech share under each). Returns the names."""
    by_window: dict[tuple, list[dict]] = {}
    for r in rows:
        by_window.setdefault((r["id"], r["window"]), []).append(r)
    for segs in by_window.values():
        segs.sort(key=lambda r: (r["start"], r["end"]))
        extra = repetition_features([normalise(r["text"]).split() for r in segs],
                                    [r["features"].get("vad.segment_share", np.nan) for r in segs])
        for r, f in zip(segs, extra):
            r["features"].update(f)
    return sorted(extra[0]) if by_window else []


def bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], flag: dict[str, float], group: np.ndarray,
              against: str) -> dict:
    """Grouped bootstrap over validation recordings (whole groups resampled with replacement): 95%
    intervals of AUROC, TPR at 1% FPR and the share of hallucinated segments flagged at the detector's
    own default threshold (`flag`, from train), and of each one's paired difference from `against`."""
    rng = np.random.default_rng(SEED)
    uniq = np.unique(group)
    members = [np.flatnonzero(group == g) for g in uniq]
    draws: dict[str, list[tuple[float, float]]] = {d: [] for d in scores}
    for _ in range(BOOTSTRAP):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        for d, s in scores.items():
            sb = s[idx]
            draws[d].append((evaluation.auroc(yb, sb), evaluation.tpr_at_fpr(yb, sb, 0.01),
                             float((sb[yb == 1] > flag[d]).mean()), float((sb[yb == 0] > flag[d]).mean())))
    out = {}
    ref = np.array(draws[against])
    for d, v in draws.items():
        v = np.array(v)
        diff = v - ref
        out[d] = {"auroc_95": np.percentile(v[:, 0], [2.5, 97.5]).tolist(),
                  "tpr1_95": np.percentile(v[:, 1], [2.5, 97.5]).tolist(),
                  "auroc_diff_95": np.percentile(diff[:, 0], [2.5, 97.5]).tolist(),
                  "tpr1_diff_95": np.percentile(diff[:, 1], [2.5, 97.5]).tolist(),
                  "tpr1_diff_share_above_0": float((diff[:, 1] > 0).mean()),
                  "flagged_95": np.percentile(v[:, 2], [2.5, 97.5]).tolist(),
                  "flagged_diff_95": np.percentile(diff[:, 2], [2.5, 97.5]).tolist(),
                  "false_flags_95": np.percentile(v[:, 3], [2.5, 97.5]).tolist()}
    return out


def label_reason(r: dict, clip: dict) -> str:
    if outside_speech(r["start"], r["end"], clip.get("speech") or []):
        return "outside speech (+-1 s)"
    return "half its words unsupported"


def misses(val: list[dict], scores: np.ndarray, threshold: float, clips: dict[str, dict]) -> list[dict]:
    out = []
    for r, s in zip(val, scores):
        if r["label"] == 1 and detection.holds_speech(r) and s <= threshold:
            clip = clips.get(r["id"], {})
            out.append({"id": r["id"], "category": r["category"], "condition": r.get("condition"),
                        "start": round(float(r["start"]), 2), "end": round(float(r["end"]), 2),
                        "clip_seconds": round(float(clip.get("duration", float("nan"))), 2),
                        "speech": clip.get("speech"), "reason": label_reason(r, clip), "score": float(s),
                        "vad_share": float(r["features"].get("baseline.vad_share", np.nan)),
                        "text": r.get("text", "").strip()[:160], "reference": (clip.get("text") or "")[:160]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=bench_dir())
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--hardcases", type=Path)
    a = ap.parse_args(argv)
    np.seterr(all="ignore")
    cache = a.cache or detection.CACHE_DIR / f"{a.model}-{detection.FEATURE_SET}.jsonl"
    hc_cache = a.hardcases / f"{a.model}-{detection.FEATURE_SET}.jsonl" if a.hardcases else None
    rows, hc_rows, _, side, groups = detection.population(a.model, a.corpus, cache, a.hardcases, hc_cache)
    clips = {c["id"]: c for c in read_manifest(a.corpus / "manifest.jsonl")}
    fit_rows = rows + [r for r in hc_rows if side[r["id"]] == "train"]
    train = [r for r in fit_rows if side[r["id"]] == "train"]
    val = [r for r in rows if side[r["id"]] == "val"]
    names = sorted({k for r in rows for k in r["features"]
                    if not k.startswith("baseline.") and not k.startswith("encoder.output.")})
    added = add_repetition(rows + hc_rows)
    y_tr = np.array([r["label"] for r in train])
    y_val = np.array([r["label"] for r in val])
    feats_val = [r["features"] for r in val]
    hc_val = [r for r in hc_rows if side[r["id"]] == "val"]
    hc_feats = [r["features"] for r in hc_val]
    y_hc = np.array([r["label"] for r in hc_val])
    hc_scores: dict[str, np.ndarray] = {}
    cv: dict[str, float] = {}
    oofs: dict[str, np.ndarray] = {}
    val_scores: dict[str, np.ndarray] = {}
    l2s: dict[str, float] = {}
    for tag, fset in (("", names), ("+repetition: ", names + added)):
        features = usable_features(train, fset)
        l2, oof_lr = choose_l2(a.model, train, features, groups)
        l2s[tag] = l2
        fam_oof = {"logistic": oof_lr, **{fam: families.trees_oof(train, features, groups, params)
                                          for fam, params in families.GRID.items()}}
        fam_cv = {f: evaluation.selection_quality(y_tr, o) for f, o in fam_oof.items()}
        best_trees = max(families.GRID, key=fam_cv.get)
        lr = _fit(a.model, train, features, l2)
        trees = families.fit_trees(a.model, train, features, families.GRID[best_trees], {}, {})
        p_lr, p_trees = lr.score(feats_val), trees.score(feats_val)
        for fam, o in fam_oof.items():
            oofs[tag + fam], cv[tag + fam] = o, fam_cv[fam]
        val_scores[tag + "logistic"], val_scores[tag + best_trees] = p_lr, p_trees
        h_lr, h_trees = (lr.score(hc_feats), trees.score(hc_feats)) if hc_val else (np.zeros(0), np.zeros(0))
        hc_scores[tag + "logistic"], hc_scores[tag + best_trees] = h_lr, h_trees
        for w in WEIGHTS[1:-1]:
            name = f"{tag}blend w={w} ({best_trees})"
            oofs[name] = blend(w, oof_lr, fam_oof[best_trees])
            cv[name] = evaluation.selection_quality(y_tr, oofs[name])
            val_scores[name] = blend(w, p_lr, p_trees)
            hc_scores[name] = blend(w, h_lr, h_trees)
    base = fit_on_split(a.model, fit_rows, side, groups, detection.BASELINE_FEATURES,
                        transforms=dict.fromkeys(detection.BASELINE_FEATURES, "identity"))
    val_scores[detection.BASELINE] = base.val_scores
    shipped = "shipped calibration (guard/calibration)"
    val_scores[shipped], shipped_thr = detection.shipped_scores(a.model, val)
    hc_scores[detection.BASELINE] = base.calibration.score(hc_feats) if hc_val else np.zeros(0)
    hc_scores[shipped] = detection.shipped_scores(a.model, hc_val)[0]
    base_trees = max(families.GRID, key=cv.get)
    single = "logistic" if cv["logistic"] + families.TREES_MARGIN > cv[base_trees] else base_trees
    best = max(cv, key=cv.get)
    strata = detection.strata(val)
    keep = ("all", "clips that hold speech (speech + mixture)", "stress mixtures",
            "shared window (speech + hallucination)")
    table = {s: {d: evaluation.summary(y_val[strata[s]], sc[strata[s]]) for d, sc in val_scores.items()}
             for s in keep if strata[s].any()}
    policy = {}
    for d, sc in val_scores.items():
        if d == shipped:
            t = shipped_thr["flag"]
        elif d == detection.BASELINE:
            t = base.calibration.thresholds["flag"]
        else:
            t = thresholds_from(y_tr, oofs[d])["flag"]
        policy[d] = {"flag_threshold": t, "hallucinated_flagged": float((sc[y_val == 1] > t).mean()),
                     "grounded_flagged": int((sc[y_val == 0] > t).sum()), "grounded": int((y_val == 0).sum())}
    hc_table = {}
    if hc_val:
        for d, sc in hc_scores.items():
            t = policy[d]["flag_threshold"]
            hc_table[d] = {**evaluation.summary(y_hc, sc), "hallucinated_flagged": float((sc[y_hc == 1] > t).mean()),
                           "grounded_flagged": int((sc[y_hc == 0] > t).sum()), "grounded": int((y_hc == 0).sum())}
    missed = misses(val, val_scores[single], policy[single]["flag_threshold"], clips)
    shown = {d: val_scores[d] for d in (single, base_trees, best, shipped, detection.BASELINE)}
    intervals = bootstrap(y_val, shown, {d: policy[d]["flag_threshold"] for d in shown},
                          np.array([groups[r["id"]] for r in val]), detection.BASELINE)
    hc_intervals = None
    if hc_val:  # a generated clip's group: the speech it was built from (its reference text), else itself
        ref = {c["id"]: c.get("text") for c in read_manifest(a.hardcases / "manifest.jsonl")}
        hc_group = np.array([ref.get(r["id"]) or r["id"] for r in hc_val])
        hc_intervals = bootstrap(y_hc, {d: hc_scores[d] for d in shown}, {d: policy[d]["flag_threshold"] for d in shown},
                                 hc_group, detection.BASELINE)
    result = {"model": a.model, "train_segments": len(train), "val_segments": len(val), "features": len(names),
              "added_features": added, "logistic_l2": l2s, "cv_quality": cv, "single_family_by_cv": single,
              "best_by_cv": best, "validation": table, "bootstrap": intervals, "policy": policy,
              "hardcase_validation": hc_table, "hardcase_bootstrap": hc_intervals,
              "missed_holds_speech": missed,
              "missed_reasons": {k: sum(m["reason"] == k for m in missed) for k in {m["reason"] for m in missed}}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ensemble-study-{a.model}.json").write_text(json.dumps(result, indent=1, default=float))
    md = markdown(result)
    (RESULTS / f"ensemble-study-{a.model}.md").write_text(md)
    print(md)
    return 0


def markdown(o: dict) -> str:
    lines = [f"# Logistic + trees blends, {o['model']} (grouped 5-fold CV on train; validation reported only)", "",
             f"Train {o['train_segments']} segments (DEV train + hard-case train), validation {o['val_segments']} "
             f"(DEV), {o['features']} features (signature without encoder geometry); \"+repetition\" adds "
             f"{', '.join(o['added_features'])} (repetition_features in this script).", "",
             "| candidate | CV quality on train (AUROC + mean TPR at 1%/5% FPR) |", "|---|---:|"]
    for k, v in sorted(o["cv_quality"].items(), key=lambda t: -t[1]):
        lines.append(f"| {k} | {v:.4f} |")
    lines += ["", f"Single family by CV (trees need +{families.TREES_MARGIN}): **{o['single_family_by_cv']}**; "
              f"best candidate by CV: **{o['best_by_cv']}** (w = the logistic model's weight).", "",
              "## DEV validation: AUROC / TPR at 1% FPR (segments, hallucinated)", ""]
    strata = list(o["validation"])
    dets = list(next(iter(o["validation"].values())))
    head = [f"{s} ({o['validation'][s][dets[0]]['n']}, {o['validation'][s][dets[0]]['hallucinated']})" for s in strata]
    lines += ["| candidate | " + " | ".join(head) + " | default flag: hallucinated / grounded flagged |",
              "|---|" + "---|" * (len(strata) + 1)]
    for d in dets:
        cells = [f"{o['validation'][s][d]['auroc']:.3f} / {o['validation'][s][d]['tpr_at_fpr_1pct']:.3f}" for s in strata]
        p = o["policy"][d]
        lines.append(f"| {d} | " + " | ".join(cells) +
                     f" | {p['hallucinated_flagged']:.3f} / {p['grounded_flagged']} of {p['grounded']} |")
    if o.get("hardcase_validation"):
        h = o["hardcase_validation"]
        first = next(iter(h.values()))
        lines += ["", f"## Generated hard cases, validation side ({first['n']} segments, {first['hallucinated']} "
                  "hallucinated; recordings never on the train side)", "",
                  "| candidate | AUROC | TPR at 1% FPR | TPR at 5% FPR | default flag: hallucinated / grounded flagged |",
                  "|---|---|---|---|---|"]
        for d, m in h.items():
            lines.append(f"| {d} | {m['auroc']:.3f} | {m['tpr_at_fpr_1pct']:.3f} | {m['tpr_at_fpr_5pct']:.3f} | "
                         f"{m['hallucinated_flagged']:.3f} / {m['grounded_flagged']} of {m['grounded']} |")
    for title, key in (("DEV validation, grouped by recording", "bootstrap"),
                       ("hard-case validation, grouped by the speech a clip was built from", "hardcase_bootstrap")):
        if o.get(key):
            lines += bootstrap_table(title, o[key])
    lines += ["", f"## What {o['single_family_by_cv']} misses on clips that hold speech "
              f"({len(o['missed_holds_speech'])} segments at its default flag threshold)", "",
              "Why the corpus rule calls them hallucinated: " +
              ", ".join(f"{k}: {v}" for k, v in sorted(o["missed_reasons"].items())), "",
              "| clip | category | segment (s) | clip (s) | rule | score | Silero share | text |", "|---|---|---|---|---|---:|---:|---|"]
    for m in sorted(o["missed_holds_speech"], key=lambda m: (m["category"] or "", m["id"], m["start"])):
        text = m["text"].replace("|", "/")
        lines.append(f"| {m['id']} | {m['category']} | {m['start']}-{m['end']} | {m['clip_seconds']} | {m['reason']} | "
                     f"{m['score']:.3f} | {m['vad_share']:.2f} | {text} |")
    return "\n".join(lines) + "\n"


def bootstrap_table(title: str, boot: dict) -> list[str]:
    lines = ["", f"## How sure: {title} ({BOOTSTRAP} bootstrap draws), 95% intervals", "",
             "| detector | AUROC | TPR at 1% FPR | AUROC minus the baseline's | TPR at 1% FPR minus the baseline's | "
             "draws where TPR beats the baseline | flagged at the default threshold | minus the baseline's | "
             "grounded flagged |", "|---|---|---|---|---|---:|---|---|---|"]
    for d, b in boot.items():
        lines.append(f"| {d} | {b['auroc_95'][0]:.3f}-{b['auroc_95'][1]:.3f} | {b['tpr1_95'][0]:.3f}-{b['tpr1_95'][1]:.3f} | "
                     f"{b['auroc_diff_95'][0]:+.3f} to {b['auroc_diff_95'][1]:+.3f} | "
                     f"{b['tpr1_diff_95'][0]:+.3f} to {b['tpr1_diff_95'][1]:+.3f} | {b['tpr1_diff_share_above_0']:.2f} | "
                     f"{b['flagged_95'][0]:.3f}-{b['flagged_95'][1]:.3f} | "
                     f"{b['flagged_diff_95'][0]:+.3f} to {b['flagged_diff_95'][1]:+.3f} | "
                     f"{b['false_flags_95'][0]:.3f}-{b['false_flags_95'][1]:.3f} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())

"""Which signature, which model family: grouped cross-validation on the DEV train side only.

    python benchmarks/signature_study.py --model tiny.en [--hardcases ~/.cache/whisper-guard/hardcases]

Issue 10, items 3, 5 and 6. Reads the detection benchmark's extraction cache (run
benchmarks/detection.py first) and never looks at validation labels for a choice:
- candidates (feature sets x model families) scored by grouped 5-fold CV on train (folds by
  group, as guard.calibrate.choose_l2), each at its best L2 on that CV: AUROC and TPR at 1% FPR
  of the pooled out-of-fold scores, overall and on clips that hold speech;
- feature-group ablation of the full signature (which features carry the score);
- the heads an L1 fit keeps;
- leave-one-language-out (fit on train minus one of es/fr/it/nl, threshold at 1% FPR on the
  validation rows of the other languages, the protocol of guard.calibrate): share of grounded
  segments of the left-out language flagged at that threshold, and its AUROC (its own segments,
  and with the validation non-speech added, as in the held-out cs/ru check).
Writes benchmarks/results/signature-study-<model>.{json,md}.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection  # noqa: E402
from hardcases import join_recording_groups  # noqa: E402

from guard import evaluation  # noqa: E402
from guard.calibrate import FLAG_FPR, L2_GRID, groups_of, split, transform_for, usable_features  # noqa: E402
from guard.corpus import bench_dir, read_manifest  # noqa: E402
from guard.score import TRANSFORMS, balanced_weights, fit_logistic  # noqa: E402

FOLDS = 5
RESULTS = Path(__file__).resolve().parent / "results"
LANGS = ("es", "fr", "it", "nl")

GROUPS = {  # feature group -> predicate on the name
    "confidence (conf.*, tok.*)": lambda f: f.startswith(("conf.", "tok.")),
    "text (seg.*, text.*)": lambda f: f.startswith(("seg.", "text.")),
    "acoustic (vad.*, energy.*)": lambda f: f.startswith(("vad.", "energy.")),
    "attention spectra (pattern.*, averaged over heads)": lambda f: ".cross_attn.pattern." in f and ".heads." not in f
    and not f.startswith("depth."),
    "per-head attention (pattern.heads.*)": lambda f: ".heads." in f,
    "sublayer-output spectra (cross_attn.out.*)": lambda f: ".cross_attn.out." in f and not f.startswith("depth."),
    "depth trends (depth.*)": lambda f: f.startswith("depth."),
    "alignment heads (align.*)": lambda f: f.startswith("align."),
    "encoder geometry (encoder.output.*)": lambda f: f.startswith("encoder.output."),
    "window context (window.*)": lambda f: f.startswith("window."),
}


def group_of(f: str) -> str:
    for g, pred in GROUPS.items():
        if pred(f):
            return g
    return "other"


class Design:
    """Transformed raw features of every row, once; standardised per fit."""

    def __init__(self, rows: list[dict], features: list[str], transforms: dict[str, str] | None = None):
        self.features = features
        x = np.array([[r["features"].get(f, np.nan) for f in features] for r in rows], dtype=np.float64)
        for j, f in enumerate(features):
            x[:, j] = TRANSFORMS[(transforms or {}).get(f) or transform_for(f)](x[:, j])
        self.x = x

    def cols(self, names: list[str]) -> np.ndarray:
        idx = [self.features.index(n) for n in names]
        return self.x[:, idx]


def standardise(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.nanmean(xtr, 0)
    scale = np.nanstd(xtr, 0)
    scale[~np.isfinite(scale) | (scale < 1e-9)] = 1.0
    mean[~np.isfinite(mean)] = 0.0
    f = lambda x: np.nan_to_num((x - mean) / scale, nan=0.0, posinf=8, neginf=-8).clip(-8, 8)  # noqa: E731
    return f(xtr), f(xte)


def fit_predict(kind: str, xtr, ytr, xte, l2: float) -> np.ndarray:
    ztr, zte = standardise(xtr, xte)
    if kind == "logistic":
        coef, b = fit_logistic(ztr, ytr, l2=l2, weights=balanced_weights(ytr))
        return zte @ coef + b
    if kind == "quadratic":
        coef, b = fit_logistic(np.hstack([ztr, ztr**2]), ytr, l2=l2, weights=balanced_weights(ytr))
        return np.hstack([zte, zte**2]) @ coef + b
    if kind == "l1":
        from sklearn.linear_model import LogisticRegression

        m = LogisticRegression(penalty="l1", C=1.0 / l2, solver="liblinear", class_weight="balanced", max_iter=2000)
        m.fit(ztr, ytr)
        return m.decision_function(zte)
    if kind == "gbt":
        from sklearn.ensemble import HistGradientBoostingClassifier

        m = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=10,
                                           l2_regularization=l2 / 10, class_weight="balanced", random_state=0)
        m.fit(xtr, ytr)
        p = m.predict_proba(xte)[:, 1]
        return np.log(np.clip(p, 1e-9, 1) / np.clip(1 - p, 1e-9, 1))
    raise ValueError(kind)


GRIDS = {"logistic": L2_GRID, "quadratic": L2_GRID, "l1": (1.0, 3.0, 10.0, 30.0), "gbt": (1.0, 10.0)}


def fold_ids(rows: list[dict], groups: dict[str, str]) -> np.ndarray:
    fold_of = {g: int(hashlib.sha256(g.encode()).hexdigest(), 16) % FOLDS for g in set(groups.values())}
    return np.array([fold_of[groups[r["id"]]] for r in rows])


def cv(kind: str, x: np.ndarray, y: np.ndarray, fold: np.ndarray, sp: np.ndarray,
       dev: np.ndarray) -> dict:
    """Grouped CV at each grid point; report the best (scored on DEV train rows; generated rows only train)."""
    best = None
    for l2 in GRIDS[kind]:
        oof = np.full(len(y), np.nan)
        for k in range(FOLDS):
            te = (fold == k) & dev
            tr = fold != k
            if te.sum() == 0 or len(set(y[tr])) < 2:
                continue
            oof[te] = fit_predict(kind, x[tr], y[tr], x[te], l2)
        m = dev & np.isfinite(oof)
        q = evaluation.selection_quality(y[m], oof[m])
        if best is None or q > best["quality"]:
            best = {"l2": l2, "quality": q, "auroc": evaluation.auroc(y[m], oof[m]),
                    "tpr1": evaluation.tpr_at_fpr(y[m], oof[m], 0.01),
                    "speech_auroc": evaluation.auroc(y[m & sp], oof[m & sp]),
                    "speech_tpr1": evaluation.tpr_at_fpr(y[m & sp], oof[m & sp], 0.01),
                    "n": int(m.sum()), "hallucinated": int(y[m].sum()), "n_speech": int((m & sp).sum()),
                    "hallucinated_speech": int(y[m & sp].sum())}
    return best


def lolo(rows: list[dict], side: dict[str, str], lang_of: dict[str, str | None], design: Design,
         feats: list[str], l2: float, label: str) -> list[dict]:
    y = np.array([r["label"] for r in rows])
    x = design.cols(feats)
    lang = np.array([lang_of.get(r["id"]) or "none" for r in rows])
    is_train = np.array([side[r["id"]] == "train" for r in rows])
    is_dev = np.array([not r["id"].startswith("hc-") for r in rows])
    nonspeech_val = np.array([r["kind"] == "nonspeech" for r in rows]) & ~is_train & is_dev
    out = []
    for L in LANGS:
        held = lang == L
        tr = is_train & ~held
        thr_rows = ~is_train & ~held & is_dev
        ztr, zall = standardise(x[tr], x)
        coef, b = fit_logistic(ztr, y[tr], l2=l2, weights=balanced_weights(y[tr]))
        s = zall @ coef + b
        thr = evaluation.threshold_at_fpr(y[thr_rows], s[thr_rows], FLAG_FPR)
        test = held & is_dev
        g = test & (y == 0)
        both = test | nonspeech_val
        out.append({"features": label, "lang": L, "grounded": int(g.sum()), "hallucinated": int((test & (y == 1)).sum()),
                    "flagged_grounded": int((s[g] > thr).sum()), "flagged_share": float((s[g] > thr).mean()) if g.any()
                    else float("nan"), "auroc_own": evaluation.auroc(y[test], s[test]),
                    "auroc_with_nonspeech": evaluation.auroc(y[both], s[both]),
                    "nonspeech_val_segments": int(nonspeech_val.sum())})
    return out


def alignment_heads(model: str) -> set[tuple[int, int]]:
    """The model's alignment heads, from its config.json (as the guard reads them)."""
    from guard.config import Settings
    from guard.models import resolve

    config = json.loads((resolve(model, cache=Settings().model_cache).path / "config.json").read_text())
    return {(int(l), int(h)) for l, h in config.get("alignment_heads") or []}


def window_relative(rows: list[dict], names: list[str]) -> list[str]:
    """Add `<name>.rel_window`: the feature minus its mean over the other segments of its clip's
    window (0 when the segment is alone): a language's offset cancels within the window."""
    by = defaultdict(list)
    for r in rows:
        by[(r["id"], r["window"])].append(r)
    out = []
    for n in names:
        rel = f"{n}.rel_window"
        out.append(rel)
        for segs in by.values():
            v = np.array([s["features"].get(n, np.nan) for s in segs], dtype=np.float64)
            tot, cnt = np.nansum(v), np.isfinite(v).sum()
            for s, vi in zip(segs, v):
                s["features"][rel] = float(vi - (tot - vi) / (cnt - 1)) if cnt > 1 and np.isfinite(vi) else 0.0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=bench_dir())
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--hardcases", type=Path)
    ap.add_argument("--no-gbt", action="store_true")
    ap.add_argument("--english", action="store_true", help="English and non-speech clips only (the held-out "
                    "check's population for tiny.en)")
    ap.add_argument("--lolo", action="store_true", help="leave-one-language-out even for an English-only model "
                    "(a smoke test of the code: tiny.en writes English over every other language)")
    a = ap.parse_args(argv)
    np.seterr(all="ignore")
    warnings.filterwarnings("ignore", module="sklearn")
    t0 = time.perf_counter()
    cache = a.cache or detection.CACHE_DIR / f"{a.model}-{detection.FEATURE_SET}.jsonl"
    clips = {c["id"]: c for c in read_manifest(a.corpus / "manifest.jsonl")}
    rows = detection.load_rows(cache, clips)
    side, groups = split(clips), groups_of(clips)
    lang_of = {cid: c.get("lang") for cid, c in clips.items()}
    hc_note = "none"
    if a.hardcases is not None:
        hc_cache = a.hardcases / f"{a.model}-{detection.FEATURE_SET}.jsonl"
        if hc_cache.exists():
            hc_clips = {c["id"]: c for c in read_manifest(a.hardcases / "manifest.jsonl")
                        if not a.model.endswith(".en") or c.get("lang") in ("en", None)}
            hc = detection.load_rows(hc_cache, hc_clips)
            join_recording_groups(hc_clips, clips, side, groups)
            for cid, c in hc_clips.items():
                side[cid], lang_of[cid] = c["side"], c.get("lang")
            hc_train = [r for r in hc if side[r["id"]] == "train"]
            rows += hc_train
            hc_note = f"{len(hc_train)} generated train segments ({sum(r['label'] for r in hc_train)} hallucinated)"
    if a.english:
        rows = [r for r in rows if lang_of.get(r["id"]) in ("en", None)]
    train = [r for r in rows if side[r["id"]] == "train"]
    all_f = sorted({k for r in train for k in r["features"] if not k.startswith("baseline.")})
    rel = window_relative(train, ["conf.avg_logprob", "tok.logprob_mean", "tok.logprob_min", "tok.entropy_mean"])
    all_f = usable_features(train, all_f)
    v1 = [f for f in all_f if not any(m in f for m in detection.NEW_MARKERS)]
    y = np.array([r["label"] for r in train])
    sp = np.array([detection.holds_speech(r) for r in train])
    dev = np.array([not r["id"].startswith("hc-") for r in train])
    fold = fold_ids(train, groups)
    design = Design(train, all_f + rel + detection.BASELINE_FEATURES,
                    {**dict.fromkeys(detection.BASELINE_FEATURES, "identity"), **dict.fromkeys(rel, "identity")})
    base6 = detection.BASELINE_FEATURES
    candidates = [("six-feature baseline", base6, "logistic"), ("signature v1", v1, "logistic"),
                  ("signature v2 (all)", all_f, "logistic"), ("signature v1 quadratic", v1, "quadratic"),
                  ("signature v2 L1", all_f, "l1")]
    for g in ("per-head attention (pattern.heads.*)", "encoder geometry (encoder.output.*)",
              "window context (window.*)"):
        candidates.append((f"v1 + {g}", v1 + [f for f in all_f if group_of(f) == g], "logistic"))
    heads = alignment_heads(a.model)
    align_head_f = [f for f in all_f if ".heads." in f and (int(f.split(".")[2]), int(f.split(".")[6])) in heads]
    candidates.append(("v1 + per-head, alignment heads only (config.json)", v1 + align_head_f, "logistic"))
    candidates.append(("v1 + participation ratio", v1 + [f for f in all_f if "participation_ratio" in f], "logistic"))
    candidates.append(("v2 + window-relative confidence", all_f + rel, "logistic"))
    candidates.append(("v2 without encoder geometry (no extra cost)",
                       [f for f in all_f if not f.startswith("encoder.output.")], "logistic"))
    if not a.no_gbt:
        candidates += [("signature v2, gradient-boosted trees", all_f, "gbt"),
                       ("signature v1, gradient-boosted trees", v1, "gbt")]
    results = []
    for name, feats, kind in candidates:
        t = time.perf_counter()
        r = cv(kind, design.cols(feats), y, fold, sp, dev)
        r.update({"candidate": name, "family": kind, "n_features": len(feats), "seconds": time.perf_counter() - t})
        results.append(r)
        print(f"{name:55s} {kind:9s} k={len(feats):4d} l2={r['l2']:<6} AUROC {r['auroc']:.3f} TPR1 {r['tpr1']:.3f} "
              f"speech AUROC {r['speech_auroc']:.3f} TPR1 {r['speech_tpr1']:.3f}", flush=True)
    ablation = []
    ref = next(r for r in results if r["candidate"] == "signature v2 (all)")
    for g in GROUPS:
        drop = [f for f in all_f if group_of(f) != g]
        only = [f for f in all_f if group_of(f) == g]
        if len(drop) == len(all_f) or not only:
            continue
        rd = cv("logistic", design.cols(drop), y, fold, sp, dev)
        ro = cv("logistic", design.cols(only), y, fold, sp, dev)
        ablation.append({"group": g, "n_features": len(only), "without_auroc": rd["auroc"], "without_tpr1": rd["tpr1"],
                         "without_speech_tpr1": rd["speech_tpr1"], "alone_auroc": ro["auroc"], "alone_tpr1": ro["tpr1"],
                         "alone_speech_tpr1": ro["speech_tpr1"]})
        print(f"ablation {g:55s} without: {rd['auroc']:.3f}/{rd['tpr1']:.3f}  alone: {ro['auroc']:.3f}/{ro['tpr1']:.3f}",
              flush=True)
    # heads an L1 fit keeps (on all of train)
    from sklearn.linear_model import LogisticRegression

    heads_only = [f for f in all_f if ".heads." in f]
    z, _ = standardise(design.cols(heads_only), design.cols(heads_only))
    m = LogisticRegression(penalty="l1", C=0.1, solver="liblinear", class_weight="balanced", max_iter=3000).fit(z, y)
    kept = sorted(((f, float(c)) for f, c in zip(heads_only, m.coef_[0]) if abs(c) > 1e-6), key=lambda t: -abs(t[1]))
    lolo_rows = []
    if (a.lolo or not a.model.endswith(".en")) and any((lang_of.get(r["id"]) or "") in LANGS for r in train):
        all_rows = detection.load_rows(cache, clips)
        rel_all = window_relative(all_rows, ["conf.avg_logprob", "tok.logprob_mean", "tok.logprob_min",
                                             "tok.entropy_mean"])
        d_all = Design(all_rows, all_f + rel_all + base6,
                       {**dict.fromkeys(base6, "identity"), **dict.fromkeys(rel_all, "identity")})
        lang_dep = ["conf.avg_logprob", "tok.logprob_mean", "tok.logprob_min", "tok.entropy_mean"]
        for label, feats, l2 in (("six-feature baseline", base6, 10.0),
                                 ("signature v1", v1, next(r["l2"] for r in results if r["candidate"] == "signature v1")),
                                 ("signature v2", all_f, ref["l2"]),
                                 ("signature v2, token confidence window-relative",
                                  [f for f in all_f if f not in lang_dep] + rel_all, ref["l2"])):
            lolo_rows += lolo(all_rows, side, lang_of, d_all, feats, l2, label)
        for r in lolo_rows:
            print(f"LOLO {r['features']:50s} {r['lang']}: flagged {r['flagged_grounded']}/{r['grounded']} "
                  f"AUROC own {r['auroc_own']:.3f} +nonspeech {r['auroc_with_nonspeech']:.3f}", flush=True)
    out = {"model": a.model, "cache": str(cache), "hardcases": hc_note, "train_segments": len(train),
           "train_dev_segments": int(dev.sum()), "hallucinated": int(y.sum()), "candidates": results,
           "ablation": ablation, "l1_heads": kept[:30], "lolo": lolo_rows, "seconds": time.perf_counter() - t0}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out["population"] = "English + non-speech clips" if a.english else "all DEV clips"
    tag = f"{a.model}-en" if a.english else a.model
    (RESULTS / f"signature-study-{tag}.json").write_text(json.dumps(out, indent=1, default=float))
    (RESULTS / f"signature-study-{tag}.md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(o: dict) -> str:
    L = [f"# Signature study: {o['model']} (grouped 5-fold CV on the DEV train side only)", "",
         f"Population: {o.get('population', 'all DEV clips')}. "
         f"{o['train_dev_segments']} DEV train segments scored out of fold; generated hard cases in the fits: "
         f"{o['hardcases']}. Each candidate at its best regularisation on this CV (criterion of "
         f"guard.calibrate.choose_l2). Out-of-fold scores pooled.", "",
         "| candidate | family | features | L2 | AUROC | TPR@1% | speech AUROC | speech TPR@1% |",
         "|---|---|---|---|---|---|---|---|"]
    for r in o["candidates"]:
        L.append(f"| {r['candidate']} | {r['family']} | {r['n_features']} | {r['l2']} | {r['auroc']:.3f} | "
                 f"{r['tpr1']:.3f} | {r['speech_auroc']:.3f} | {r['speech_tpr1']:.3f} |")
    if o["candidates"]:
        r = o["candidates"][0]
        L += ["", f"n = {r['n']} ({r['hallucinated']} hallucinated); clips that hold speech n = {r['n_speech']} "
              f"({r['hallucinated_speech']} hallucinated)."]
    L += ["", "## Which features carry the score (signature v2, logistic; CV AUROC / TPR@1%)", "",
          "| group | features | without it | speech TPR@1% without | alone | speech TPR@1% alone |",
          "|---|---|---|---|---|---|"]
    for a in o["ablation"]:
        L.append(f"| {a['group']} | {a['n_features']} | {a['without_auroc']:.3f} / {a['without_tpr1']:.3f} | "
                 f"{a['without_speech_tpr1']:.3f} | {a['alone_auroc']:.3f} / {a['alone_tpr1']:.3f} | "
                 f"{a['alone_speech_tpr1']:.3f} |")
    L += ["", "## Heads an L1 fit on the per-head features keeps (C = 0.1, largest first)", ""]
    L += [f"- `{f}`: {c:+.3f}" for f, c in o["l1_heads"][:15]]
    if o["lolo"]:
        L += ["", "## Leave-one-language-out (fit without the language; flag threshold at 1% FPR on the other "
              "languages' validation rows)", "",
              "| features | left out | grounded | flagged | share | hallucinated | AUROC (own) | AUROC (+ val. non-speech) |",
              "|---|---|---|---|---|---|---|---|"]
        for r in o["lolo"]:
            L.append(f"| {r['features']} | {r['lang']} | {r['grounded']} | {r['flagged_grounded']} | "
                     f"{r['flagged_share']:.1%} | {r['hallucinated']} | {r['auroc_own']:.3f} | "
                     f"{r['auroc_with_nonspeech']:.3f} |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""Per-word hallucination scores: extract, label, fit on DEV train, report on DEV validation.

    python benchmarks/word_scores.py --corpus ../shared/bench --model tiny.en [--write-calibration]

1. extract: every clip through the guard with word timestamps and features (resumable cache,
   benchmarks/.cache/words-<model>.jsonl; run it with `nice`, it takes a while on a shared host);
2. label words with the corpus rule, at word level: the clip's hypothesis words (each Whisper word
   normalised on its own) are aligned against the reference as `guard.labels.word_ops` does; a word
   is hallucinated when its normalised words are `ins` or `far`, or when it lies outside every
   speech interval widened by 1 s; words that normalise to nothing are not labelled;
3. split clips exactly as the detection benchmark does (guard.calibrate.split / groups_of);
4. fit a logistic word score on train (L2 by grouped CV on train; thresholds from out-of-fold train
   scores: flag at 1% of grounded train words, suppress at 0.5%), report on validation beside two
   anchors: faster-whisper's word probability (as 1 - p) and the segment score broadcast to its
   words; AUROC and TPR at 1% FPR, overall and on the mixed case (segments holding both grounded
   and invented words); what word-level suppress removes;
5. write benchmarks/results/words-score-<model>.{json,md} (+ guard/calibration/words-<model>.json).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guard import evaluation  # noqa: E402
from guard.calibrate import L2_GRID, groups_of, split, transform_for  # noqa: E402
from guard.corpus import read_manifest  # noqa: E402
from guard.labels import outside_speech, word_ops, words as norm_words  # noqa: E402
from guard.score import Calibration, fit  # noqa: E402
from guard.words import segment_context  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FLAG_FPR, SUPPRESS_FPR = 0.01, 0.005
WORD_TRANSFORMS = {"word.probability": "logit", "word.attn_speech_mass": "logit", "word.vad_prob": "logit",
                   "word.vad_share": "logit", "seg.score": "logit", "word.duration": "log", "word.chars": "log",
                   "word.path_frames": "log", "word.speech_distance_s": "log", "word.attn_concentration": "logit"}


def extract(corpus: Path, model: str, cache: Path, limit: int | None = None) -> None:
    from guard import corpus as runner
    from guard.config import Settings
    from guard.pipeline import Guard
    from guard.results import RequestOptions

    guard = Guard(Settings(model=model, max_concurrent=1))
    for _ in runner.run(guard, corpus / "manifest.jsonl", cache, limit=limit, progress=True,
                        options=RequestOptions(return_features=True, word_timestamps=True)):
        pass


# ---------------------------------------------------------------- labels
def label_words(clips: dict[str, dict], cache: Path) -> list[dict]:
    """One row per labelled word: features, label, the anchors, clip/segment identity."""
    rows = []
    for line in cache.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        clip = clips[rec["id"]]
        lang = clip.get("lang")
        items = []  # (segment index, word dict, its normalised pieces)
        for si, seg in enumerate(sorted(rec["segments"], key=lambda s: (s["start"], s["end"]))):
            for w in seg.get("words") or []:
                items.append((si, seg, w, norm_words(w["word"], lang)))
        hyp = [p for *_, pieces in items for p in pieces]
        ops = word_ops(hyp, norm_words(clip.get("text", ""), lang)) if hyp else []
        k = 0
        for si, seg, w, pieces in items:
            mine, k = ops[k:k + len(pieces)], k + len(pieces)
            if not pieces:
                continue
            invented = any(o in ("ins", "far") for o in mine)
            outside = outside_speech(w["start"], w["end"], clip["speech"])
            feats = {**segment_context(seg.get("features")), **w["features"]}  # older caches lack the context
            rows.append({"id": rec["id"], "segment": f"{rec['id']}#{si}", "kind": clip["kind"],
                         "category": clip.get("category"), "label": int(invented or outside),
                         "features": feats, "probability": w["probability"], "segment_score": seg["score"]})
    return rows


# ---------------------------------------------------------------- fit
def _fit(model: str, rows: list[dict], features: list[str], l2: float) -> Calibration:
    return fit(f"words-{model}", [r["features"] for r in rows], np.array([r["label"] for r in rows]), features,
               {f: WORD_TRANSFORMS.get(f, transform_for(f)) for f in features}, l2=l2)


def out_of_fold(model: str, rows: list[dict], features: list[str], groups: dict[str, str], l2: float,
                folds: int = 5) -> np.ndarray:
    fold_of = {g: int(hashlib.sha256(g.encode()).hexdigest(), 16) % folds for g in set(groups.values())}
    fold = np.array([fold_of[groups[r["id"]]] for r in rows])
    scores = np.zeros(len(rows))
    for k in range(folds):
        train = [r for r, f in zip(rows, fold) if f != k]
        idx = np.flatnonzero(fold == k)
        if len(idx) and len({r["label"] for r in train}) == 2:
            scores[idx] = _fit(model, train, features, l2).score([rows[i]["features"] for i in idx])
    return scores


def usable(rows: list[dict]) -> list[str]:
    names = sorted({k for r in rows for k in r["features"]})
    keep = []
    for f in names:
        v = np.array([r["features"].get(f, np.nan) for r in rows], dtype=np.float64)
        if np.isfinite(v).mean() > 0.95 and np.nanstd(v) > 1e-9:
            keep.append(f)
    return keep


def mixed_segments(rows: list[dict]) -> np.ndarray:
    labels = defaultdict(set)
    for r in rows:
        labels[r["segment"]].add(r["label"])
    return np.array([labels[r["segment"]] == {0, 1} for r in rows])


def evaluate(model: str, corpus: Path, cache: Path, write_calibration: bool) -> dict:
    clips = {c["id"]: c for c in read_manifest(corpus / "manifest.jsonl")}
    rows = label_words(clips, cache)
    side, groups = split(clips), groups_of(clips)
    train = [r for r in rows if side[r["id"]] == "train"]
    val = [r for r in rows if side[r["id"]] == "val"]
    features = usable(train)
    best, best_l2, oof = -np.inf, L2_GRID[0], None
    y_tr = np.array([r["label"] for r in train])
    for l2 in L2_GRID:
        s = out_of_fold(model, train, features, groups, l2)
        q = evaluation.auroc(y_tr, s) + evaluation.tpr_at_fpr(y_tr, s, 0.01)
        if q > best:
            best, best_l2, oof = q, l2, s
    cal = _fit(model, train, features, best_l2)
    flag_t = float(np.nextafter(evaluation.threshold_at_fpr(y_tr, oof, FLAG_FPR), 1.0))
    sup_t = float(np.nextafter(evaluation.threshold_at_fpr(y_tr, oof, SUPPRESS_FPR), 1.0))
    cal.thresholds = {"flag": min(max(flag_t, 0.0), 1.0), "suppress": min(max(sup_t, flag_t, 0.0), 1.0)}
    y = np.array([r["label"] for r in val])
    detectors = {"whisper-guard word score": cal.score([r["features"] for r in val]),
                 "faster-whisper word probability (1 - p)": 1.0 - np.array([r["probability"] for r in val]),
                 "segment score broadcast to words": np.array([r["segment_score"] for r in val])}
    subsets = {"all": np.ones(len(val), bool), "mixed segments (grounded + invented words)": mixed_segments(val),
               **{f"kind={k}": np.array([r["kind"] == k for r in val]) for k in sorted({r["kind"] for r in val})}}
    table = {name: {d: evaluation.summary(y[m], s[m]) for d, s in detectors.items()}
             for name, m in subsets.items() if m.sum()}
    score = detectors["whisper-guard word score"]
    policy = {}
    for action in ("flag", "suppress"):
        hit = score >= cal.thresholds[action]
        mixed = subsets["mixed segments (grounded + invented words)"]
        policy[action] = {"threshold": cal.thresholds[action],
                          "hallucinated_words_removed": float(hit[y == 1].mean()) if (y == 1).any() else None,
                          "grounded_words_removed": float(hit[y == 0].mean()) if (y == 0).any() else None,
                          "mixed_hallucinated_removed": float(hit[mixed & (y == 1)].mean()) if (mixed & (y == 1)).any() else None,
                          "mixed_grounded_removed": float(hit[mixed & (y == 0)].mean()) if (mixed & (y == 0)).any() else None}
    cal.meta = {"split": "guard.calibrate.split (as benchmarks/detection.py)", "l2": best_l2,
                "train_words": len(train), "val_words": len(val), "thresholds_from": "out-of-fold train scores",
                "labels": "corpus rule at word level (benchmarks/word_scores.py)"}
    coef = sorted(zip(cal.features, cal.coef), key=lambda t: -abs(t[1]))
    result = {"model": model, "clips": len({r["id"] for r in rows}), "words": len(rows),
              "hallucinated_words": int(sum(r["label"] for r in rows)), "train_words": len(train),
              "val_words": len(val), "l2": best_l2, "features": features, "thresholds": cal.thresholds,
              "table": table, "policy": policy, "top_coefficients": [[f, float(c)] for f, c in coef[:15]]}
    if write_calibration:
        path = ROOT / "guard" / "calibration" / f"words-{model}.json"
        path.write_text(json.dumps(cal.to_json(), indent=1))
        result["calibration_written"] = str(path.relative_to(ROOT))
    return result


def markdown(r: dict) -> str:
    lines = [f"# Word-level hallucination scores: {r['model']}", "",
             f"{r['clips']} DEV clips, {r['words']} labelled words ({r['hallucinated_words']} hallucinated); "
             f"fit on {r['train_words']} train words, reported on {r['val_words']} validation words "
             "(grouped split of benchmarks/detection.py). Thresholds from out-of-fold train scores.", "",
             "| subset | detector | n | hallucinated | AUROC | TPR@1%FPR | TPR@5%FPR |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, dets in r["table"].items():
        for d, s in dets.items():
            lines.append(f"| {name} | {d} | {s['n']} | {s['hallucinated']} | {s['auroc']:.3f} | "
                         f"{s['tpr_at_fpr_1pct']:.3f} | {s['tpr_at_fpr_5pct']:.3f} |")
    lines += ["", "Word-level policy on validation (share of words whose verdict removes them):", "",
              "| action | threshold | hallucinated removed | grounded removed | mixed: hallucinated | mixed: grounded |",
              "|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for a, p in r["policy"].items():
        lines.append(f"| {a} | {p['threshold']:.3f} | {fmt(p['hallucinated_words_removed'])} | "
                     f"{fmt(p['grounded_words_removed'])} | {fmt(p['mixed_hallucinated_removed'])} | "
                     f"{fmt(p['mixed_grounded_removed'])} |")
    lines += ["", "Largest coefficients: " + ", ".join(f"`{f}` {c:+.2f}" for f, c in r["top_coefficients"][:10]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "bench")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--extract-only", action="store_true")
    ap.add_argument("--write-calibration", action="store_true")
    args = ap.parse_args(argv)
    cache = HERE / ".cache" / f"words-{args.model}.jsonl"
    extract(args.corpus, args.model, cache, args.limit)
    if args.extract_only:
        return 0
    result = evaluate(args.model, args.corpus, cache, args.write_calibration)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"words-score-{args.model}.json").write_text(json.dumps(result, indent=1, default=float))
    md = markdown(result)
    (RESULTS / f"words-score-{args.model}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

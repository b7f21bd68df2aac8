"""Detection benchmark: the guard's score against every anchor, on held-out clips of the corpus.

    python benchmarks/detection.py [--corpus DIR] --model tiny.en [--write-calibration]
    (the corpus: --corpus, else $WHISPER_GUARD_BENCH, else ../shared/bench)
        [--hardcases ~/.cache/whisper-guard/hardcases]

1. extract: run every clip through the guard (resumable cache, by default
   ~/.cache/whisper-guard/bench/<model>-<FEATURE_SET>.jsonl, outside the repository so that it
   survives a fresh checkout on the same machine; $WHISPER_GUARD_BENCH_CACHE moves it);
2. label segments with the corpus rule; split clips into train/validation (guard.calibrate.split);
3. fit the guard's score (current signature, and the first signature's features for comparison;
   the shipped candidate's model family, logistic or LightGBM trees, by grouped CV on train:
   benchmarks/families.py; every threshold from train out-of-fold scores, never validation),
   the six-feature baseline (the bar: avg_logprob, no_speech_prob, compression_ratio, Silero
   speech share under the segment (0 past the end of the audio), log(1 + duration), word count)
   and a "confidence-only" model the same way on train (optionally adding the hard-case clips'
   train side, benchmarks/hardcases.py; each hard case shares the CV group of the DEV recording it
   was built from, hardcases.join_recording_groups);
4. report on validation only: AUROC, TPR at 1% and 5% FPR for the guard and every anchor
   (avg_logprob, no_speech_prob, compression ratio, faster-whisper's skip rule, Silero VAD speech
   share, whisper-guard 0.3.3, Bag of Hallucinations, confidence-only), by kind/category, on the
   stress mixtures and on windows that hold both real speech and hallucination; the default policy's
   suppression numbers; for multilingual models, leave one language out (es/fr/it/nl);
   English-only models (tiny.en) are fitted and reported on DEV's English and non-speech clips;
5. write benchmarks/results/detection-<model>.{json,md,png} and validation predictions in the
   corpus scorer's format (benchmarks/results/raw/predictions-<model>.jsonl), then run the corpus'
   own score.py on them as a cross-check.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from guard import evaluation
from guard.calibrate import CONFIDENCE_FEATURES, fit_on_split, groups_of, split
from guard.corpus import bench_dir, load, read_manifest
from guard.labels import label_segments
from guard.signature import normalise

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402
import language_backfill  # noqa: E402
from hardcases import join_recording_groups  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ANCHOR_DIR = HERE / ".cache" / "anchors"
FEATURE_SET = "sig2"  # bump when the signature's features change: a cache holds one feature set
CACHE_DIR = Path(os.environ.get("WHISPER_GUARD_BENCH_CACHE", Path.home() / ".cache" / "whisper-guard" / "bench"))
BASELINE_FEATURES = ["conf.avg_logprob", "conf.no_speech_prob", "conf.compression_ratio", "baseline.vad_share",
                     "baseline.log1p_duration", "baseline.word_count"]
# features added in round 2 (issue 10): left out of the "signature v1" refit
NEW_MARKERS = (".heads.", "participation_ratio", "encoder.output.", "window.")
GUARD = "whisper-guard (signature v2, refit)"
GUARD_NOENC = "whisper-guard (signature v2 without encoder geometry, family by CV, refit)"
BASELINE = "six-feature baseline (the bar)"


def add_baseline_features(rows: list[dict], duration: dict[str, float]) -> None:
    """The six-feature baseline's inputs, from what faster-whisper and Silero give (issue 10)."""
    for r in rows:
        f = r["features"]
        past_end = r["start"] >= duration[r["id"]]
        f["baseline.vad_share"] = 0.0 if past_end else float(f["vad.segment_share"])
        f["baseline.log1p_duration"] = math.log1p(max(0.0, r["end"] - r["start"]))
        f["baseline.word_count"] = float(len(r["text"].split()))


# ---------------------------------------------------------------- anchors
def whisper_guard_033(segments_by_clip: dict[str, list[dict]]) -> dict[int, float]:
    """whisper-guard 0.3.3 (PyPI), installed beside the benchmark: 1 where it drops the segment."""
    if not (ANCHOR_DIR / "whisper_guard").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(ANCHOR_DIR),
                        "whisper-guard==0.3.3"], check=True)
    sys.path.insert(0, str(ANCHOR_DIR))
    from whisper_guard import WhisperGuard  # type: ignore

    wg = WhisperGuard()
    out = {}
    for segs in segments_by_clip.values():
        view = [{"text": s["text"], "start": s["start"], "end": s["end"], "avg_logprob": s["avg_logprob"],
                 "no_speech_prob": s["no_speech_prob"], "compression_ratio": s["compression_ratio"], "_i": i}
                for i, s in enumerate(segs)]
        result = wg.process(view)
        # it copies the segments it keeps, so match them by position
        kept = {s["_i"] for s in wg._filter_segments(view)} if result.passed else set()
        for i, s in enumerate(segs):
            out[s["_key"]] = 0.0 if i in kept else 1.0
    return out


def boh_match(text: str, phrases: frozenset[str]) -> float:
    """Bag of Hallucinations: the segment is a listed phrase, or a loop of one (de-looping)."""
    words = normalise(text).split()
    if not words:
        return 0.0
    joined = " ".join(words)
    if joined in phrases:
        return 1.0
    for size in range(1, min(8, len(words) // 2) + 1):  # a loop of one unit made only of listed phrases
        unit = " ".join(words[:size])
        if unit in phrases and len(words) % size == 0 and words == words[:size] * (len(words) // size):
            return 1.0
    return 0.0


def anchor_scores(rows: list[dict], phrases: frozenset[str]) -> dict[str, np.ndarray]:
    f = lambda k: np.array([r["features"][k] for r in rows])  # noqa: E731
    nsp, alp = f("conf.no_speech_prob"), f("conf.avg_logprob")
    by_clip = defaultdict(list)
    for r in rows:
        by_clip[r["id"]].append(r)
    wg = whisper_guard_033(by_clip)
    return {
        "avg_logprob": -alp,
        "no_speech_prob": nsp,
        "compression_ratio": f("conf.compression_ratio"),
        "faster-whisper skip rule": ((nsp > 0.6) & (alp < -1.0)).astype(float),
        "Silero VAD speech share": 1.0 - f("vad.segment_share"),
        "whisper-guard 0.3.3": np.array([wg[r["_key"]] for r in rows]),
        "Bag of Hallucinations": np.array([boh_match(r["text"], phrases) for r in rows]),
    }


# ---------------------------------------------------------------- subsets
def shared_window(rows: list[dict]) -> np.ndarray:
    """Segments in a 30 s window that holds both grounded and hallucinated segments."""
    labels = defaultdict(set)
    for r in rows:
        labels[(r["id"], r["window"])].add(r["label"])
    return np.array([labels[(r["id"], r["window"])] == {0, 1} for r in rows])


def policy_numbers(rows: list[dict], scores: np.ndarray, thresholds: dict[str, float]) -> dict:
    y = np.array([r["label"] for r in rows])
    words = np.array([r["n_words"] for r in rows])
    nonspeech = np.array([r["kind"] == "nonspeech" for r in rows])
    out = {}
    for action in ("flag", "suppress"):
        hit = scores >= thresholds[action]
        out[action] = {
            "threshold": thresholds[action],
            "recall": float(hit[y == 1].mean()) if (y == 1).any() else float("nan"),
            "false_rate_grounded": float(hit[y == 0].mean()) if (y == 0).any() else float("nan"),
            "hallucinated_words_removed": float(words[hit & (y == 1)].sum() / max(1, words[y == 1].sum())),
            "nonspeech_hallucinated_words_removed": float(words[hit & (y == 1) & nonspeech].sum() /
                                                          max(1, words[(y == 1) & nonspeech].sum())),
            "grounded_words_removed": float(words[hit & (y == 0)].sum() / max(1, words[y == 0].sum())),
        }
    return out


def extract(corpus: Path, model: str, cache: Path) -> None:
    """Every clip through the guard with features (resumable; about 20-40 min for DEV with tiny.en)."""
    from guard import corpus as runner
    from guard.config import Settings
    from guard.pipeline import Guard
    from guard.results import RequestOptions

    if len(runner.done_ids(cache)) >= len(runner.read_manifest(corpus / "manifest.jsonl")):
        return
    guard = Guard(Settings(model=model, max_concurrent=1), require_calibration=False)
    for _ in runner.run(guard, corpus / "manifest.jsonl", cache, options=RequestOptions(return_features=True),
                        progress=True):
        pass


# ---------------------------------------------------------------- report
def load_rows(cache: Path, clips: dict[str, dict], info_out: dict | None = None) -> list[dict]:
    segments, info = load(cache)
    language_backfill.fill(segments, language_backfill.read(cache))  # lang.* for rows extracted before them
    rows = [r for r in label_segments(clips, [s for s in segments if s["id"] in clips])]
    for r in rows:
        r["lang"] = clips[r["id"]].get("lang")
    add_baseline_features(rows, {cid: i["duration"] for cid, i in info.items()})
    if info_out is not None:
        info_out.update(info)
    return rows


def holds_speech(r: dict) -> bool:
    return r["kind"] in ("speech", "mixture")


def strata(val: list[dict]) -> dict[str, np.ndarray]:
    out = {
        "all": np.ones(len(val), bool),
        "clips that hold speech (speech + mixture)": np.array([holds_speech(r) for r in val]),
        "English + non-speech clips (the held-out check's population)": np.array([r["lang"] in ("en", None)
                                                                                   for r in val]),
        "English clips that hold speech": np.array([holds_speech(r) and r["lang"] == "en" for r in val]),
        "stress mixtures": np.array([r["category"] == "stress" for r in val]),
        "shared window (speech + hallucination)": shared_window(val),
        **{f"kind={k}": np.array([r["kind"] == k for r in val]) for k in sorted({r["kind"] for r in val})},
        **{f"category={c}": np.array([r["category"] == c for r in val]) for c in sorted({r["category"] for r in val})},
    }
    conditions = sorted({(r.get("condition") or "").split()[0] for r in val if r["category"] == "stress"})
    for cond in conditions:
        out[f"stress:{cond}"] = np.array([r["category"] == "stress" and (r.get("condition") or "").startswith(cond)
                                          for r in val])
    return out


LENGTH_BINS = ((1, 4), (4, 8), (8, 16), (16, 10**6))  # text tokens per segment


def _length_matched_change(v: np.ndarray, y: np.ndarray, n_tok: np.ndarray) -> tuple[float, int]:
    """Hallucinated/grounded median ratio - 1 within token-count bins, averaged weighted by the
    smaller class's count (rank is bounded by the number of rows, and hallucinations are short)."""
    num, den = 0.0, 0
    for lo, hi in LENGTH_BINS:
        m = (n_tok >= lo) & (n_tok < hi) & np.isfinite(v)
        g, h = v[m & (y == 0)], v[m & (y == 1)]
        w = min(len(g), len(h))
        if w >= 3 and np.median(g) != 0:
            num += w * (np.median(h) / np.median(g) - 1)
            den += w
    return (num / den if den else float("nan")), den


def science(model: str, val: list[dict]) -> dict:
    """Issue 10 item 6: per decoder layer, median cross-attention effective rank and spectral slope
    (of the attention maps and of the cross-attention sublayer output, the tensor SCIENCE.md's
    figures are about) of grounded vs hallucinated validation segments, with n; raw and within
    token-count bins."""
    y = np.array([r["label"] for r in val])
    n_tok = np.array([r["features"].get("seg.n_tokens", 0) for r in val])
    sp = np.array([holds_speech(r) for r in val])
    layers = sorted({int(k.split(".")[2]) for r in val[:1] for k in r["features"]
                     if k.startswith("decoder.layers.") and k.endswith(".cross_attn.pattern.eff_rank")})
    out = {"n_grounded": int((y == 0).sum()), "n_hallucinated": int((y == 1).sum()),
           "n_grounded_holds_speech": int(((y == 0) & sp).sum()),
           "n_hallucinated_holds_speech": int(((y == 1) & sp).sum()), "layers": []}
    for l in layers:
        row = {"layer": l}
        for tensor in ("pattern", "out"):
            for key in ("eff_rank", "slope"):
                name = f"decoder.layers.{l}.cross_attn.{tensor}.{key}"
                v = np.array([r["features"].get(name, np.nan) for r in val])
                g, h = float(np.nanmedian(v[y == 0])), float(np.nanmedian(v[y == 1]))
                matched, n_matched = _length_matched_change(v, y, n_tok)
                matched_sp, n_matched_sp = _length_matched_change(v[sp], y[sp], n_tok[sp])
                row[f"{tensor}.{key}"] = {
                    "grounded": g, "hallucinated": h, "change": h / g - 1 if g else float("nan"),
                    "length_matched_change": matched, "length_matched_weight": n_matched,
                    "holds_speech_length_matched_change": matched_sp, "holds_speech_weight": n_matched_sp,
                    "auroc": evaluation.auroc(y, v if key == "slope" else -v)}
        out["layers"].append(row)
    return out


def population(model: str, corpus: Path, cache: Path, hardcases: Path | None = None,
               hc_cache: Path | None = None) -> tuple[list[dict], list[dict], dict, dict[str, str], dict[str, str]]:
    """The labelled rows of the fits: DEV rows (an English-only model: English and non-speech only), the
    generated hard cases' rows, the extraction info per DEV clip, each clip's side and its group."""
    clips = {c["id"]: c for c in read_manifest(corpus / "manifest.jsonl")}
    info: dict = {}
    rows = load_rows(cache, clips, info)
    if model.endswith(".en"):  # an English-only model: its population is English speech and non-speech
        rows = [r for r in rows if r["lang"] in ("en", None)]
        info = {cid: i for cid, i in info.items() if clips[cid].get("lang") in ("en", None)}
    side = split(clips)
    groups = groups_of(clips)
    hc_rows: list[dict] = []
    if hardcases is not None and hc_cache is not None and hc_cache.exists():
        hc_clips = {c["id"]: c for c in read_manifest(hardcases / "manifest.jsonl")
                    if not model.endswith(".en") or c.get("lang") in ("en", None)}
        hc_rows = load_rows(hc_cache, hc_clips)
        join_recording_groups(hc_clips, clips, side, groups)  # before their sides join `side`
        for cid, c in hc_clips.items():
            side[cid] = c["side"]
    for k, r in enumerate(rows + hc_rows):
        r["_key"] = k
    return rows, hc_rows, info, side, groups


def evaluate(model: str, corpus: Path, cache: Path, write_calibration: bool, hardcases: Path | None = None,
             hc_cache: Path | None = None, ship: str = "no-encoder") -> dict:
    from guard.pipeline import load_phrases

    rows, hc_rows, info, side, groups = population(model, corpus, cache, hardcases, hc_cache)
    fit_rows = rows + [r for r in hc_rows if side[r["id"]] == "train"]  # hard cases only ever train
    all_features = sorted({k for r in rows for k in r["features"] if not k.startswith("baseline.")})
    v1_features = [f for f in all_features if not any(m in f for m in NEW_MARKERS)]
    guard_fit = fit_on_split(model, fit_rows, side, groups, all_features)
    noenc_fit, _ = families.fit_family_on_split(model, fit_rows, side, groups,
                                                [f for f in all_features if not f.startswith("encoder.output.")],
                                                travel=not model.endswith(".en"))
    shipped_fit = noenc_fit if ship == "no-encoder" else guard_fit
    v1_fit = fit_on_split(model, fit_rows, side, groups, v1_features)
    base_fit = fit_on_split(model, fit_rows, side, groups, BASELINE_FEATURES,
                            transforms=dict.fromkeys(BASELINE_FEATURES, "identity"))
    conf_fit = fit_on_split(model, fit_rows, side, groups, CONFIDENCE_FEATURES)
    val = [r for r in rows if side[r["id"]] == "val"]
    hc_val = [r for r in hc_rows if side[r["id"]] == "val"]
    y = np.array([r["label"] for r in val])
    shipped_val, shipped_thr = shipped_scores(model, val)  # read before --write-calibration replaces the file
    detectors = {GUARD: guard_fit.val_scores, GUARD_NOENC: noenc_fit.val_scores,
                 "whisper-guard (signature v1, refit)": v1_fit.val_scores,
                 "whisper-guard (shipped calibration)": shipped_val,
                 BASELINE: base_fit.val_scores, "confidence-only model": conf_fit.val_scores,
                 **anchor_scores(val, load_phrases())}
    table = {name: {d: evaluation.summary(y[m], s[m]) for d, s in detectors.items()}
             for name, m in strata(val).items() if m.sum() > 0}
    result_hc = None
    if hc_val:
        yh = np.array([r["label"] for r in hc_val])
        hdet = {}
        for name, fitted in ((GUARD, guard_fit), (GUARD_NOENC, noenc_fit), ("whisper-guard (signature v1, refit)", v1_fit),
                             (BASELINE, base_fit), ("confidence-only model", conf_fit)):
            hdet[name] = fitted.calibration.score([r["features"] for r in hc_val])
        hdet["whisper-guard (shipped calibration)"] = shipped_scores(model, hc_val)[0]
        masks = {"all hard-case validation": np.ones(len(hc_val), bool),
                 **{f"hardcase:{c}": np.array([r["category"] == c for r in hc_val])
                    for c in sorted({r["category"] for r in hc_val})}}
        result_hc = {name: {d: evaluation.summary(yh[m], s[m]) for d, s in hdet.items()}
                     for name, m in masks.items() if m.sum() > 0}
    noenc_features = [f for f in all_features if not f.startswith("encoder.output.")]
    lolo = None if model.endswith(".en") else leave_one_language_out(model, rows, side, groups, noenc_features, hc_rows)
    lolo_shipped = None  # the same, with the shipped candidate's family when CV chose trees (fixed, not reselected)
    if lolo is not None and ship == "no-encoder" and noenc_fit.report["family"] != "logistic":
        family = noenc_fit.report["family"]
        lolo_shipped = leave_one_language_out(
            model, rows, side, groups, noenc_features, hc_rows,
            fit=lambda *a: families.fit_family_on_split(*a, families=(family,))[0])
    policy = policy_numbers(val, shipped_fit.val_scores, shipped_fit.calibration.thresholds)
    shipped_policy = policy_numbers(val, shipped_val, shipped_thr)
    baseline_policy = policy_numbers(val, base_fit.val_scores, base_fit.calibration.thresholds)
    timings = defaultdict(float)
    audio = 0.0
    for i in info.values():
        audio += i["duration"]
        for k, v in i["timings"].items():
            timings[k] += v
    coef = sorted(zip(guard_fit.calibration.features, guard_fit.calibration.coef), key=lambda t: -abs(t[1]))
    carried = carrying_features(shipped_fit.calibration, [r["features"] for r in val])
    result = {"model": model, "corpus": str(corpus), "clips": len(info), "segments": len(rows),
              "hallucinated": int(sum(r["label"] for r in rows)), "guard_fit": guard_fit.report,
              "v1_fit": v1_fit.report, "baseline_fit": base_fit.report,
              "baseline_coefficients": dict(zip(base_fit.calibration.features, base_fit.calibration.coef.tolist())),
              "confidence_fit": conf_fit.report, "table": table, "hardcase_table": result_hc,
              "hardcase_segments": {"train": sum(side[r["id"]] == "train" for r in hc_rows), "val": len(hc_val)},
              "policy": policy, "baseline_policy": baseline_policy, "shipped_policy": shipped_policy,
              "ship_candidate": ship, "noenc_fit": noenc_fit.report, "science": science(model, val),
              "stage_seconds": dict(timings), "audio_seconds": audio,
              "top_coefficients": [[f, float(c)] for f, c in coef[:25]], "shipped_carrying_features": carried,
              "leave_one_language_out": lolo, "leave_one_language_out_shipped_family": lolo_shipped}
    result["roc"] = []
    for d, sc in detectors.items():
        fpr, tpr = roc_points(y, sc)
        result["roc"].append({"name": d, "auroc": table["all"][d]["auroc"], "fpr": fpr, "tpr": tpr})
    if write_calibration:
        path = Path(__file__).resolve().parents[1] / "guard" / "calibration" / f"{model}.json"
        path.write_text(json.dumps(shipped_fit.calibration.to_json(), indent=1))
        result["calibration_written"] = str(path)
    write_predictions(model, val, shipped_fit)
    return result


def carrying_features(cal, rows: list[dict], top: int = 15) -> list[list]:
    """Which features carry the score: mean |contribution| (logits) over the rows, largest first."""
    from guard.score_trees import TreeCalibration

    contrib = cal.contributions(rows)[0] if isinstance(cal, TreeCalibration) else cal.contributions(cal.design(rows))
    share = np.abs(contrib).mean(axis=0)
    order = np.argsort(-share)[:top]
    return [[cal.features[j], float(share[j])] for j in order]


LOLO_LANGS = ("es", "fr", "it", "nl")


def leave_one_language_out(model: str, rows: list[dict], side: dict[str, str], groups: dict[str, str],
                           features: list[str], hardcase_rows: list[dict] = (), fit=None) -> dict:
    """Issue 10 item 5 (multilingual models): fit on the train side without language L (English, the other
    three, non-speech), then test on every clip of L (it never trained) plus the validation non-speech
    clips. The left-out language's grounded segments flagged at the fit's default threshold (from its
    own train out-of-fold scores), and AUROC.

    `hardcase_rows`: generated clips; those of the train side whose speech is not in L join the fit
    (a clip built from L's recordings never does), and none is tested. `fit`: how each fit is made, a
    `fit_on_split`-like callable (default: the logistic protocol; the benchmark also passes the shipped
    family's, so that the figure is the shipped model's)."""
    fit = fit or fit_on_split
    out = {}
    lang_by_id = {r["id"]: r["lang"] for r in rows}
    hc_lang = {r["id"]: r["lang"] for r in hardcase_rows}
    for lang in LOLO_LANGS:
        held = {r["id"] for r in rows if r["lang"] == lang}
        if not held:
            continue
        lside = {}
        for cid, s in side.items():
            if cid in hc_lang:
                lside[cid] = "train" if s == "train" and hc_lang[cid] != lang else "out"
            elif cid in held or (s == "val" and cid in lang_by_id and lang_by_id[cid] is None):
                lside[cid] = "val"
            else:
                lside[cid] = "train" if s == "train" and lang_by_id.get(cid) != lang else "out"
        fitted = fit(model, rows + list(hardcase_rows), lside, groups, features)
        test = [r for r in rows if lside[r["id"]] == "val"]
        y = np.array([r["label"] for r in test])
        s = fitted.val_scores
        in_lang = np.array([r["lang"] == lang for r in test])
        flag = fitted.calibration.thresholds["flag"]
        g = in_lang & (y == 0)
        out[lang] = {"clips": len(held), "segments": int(in_lang.sum()), "grounded": int(g.sum()),
                     "hallucinated_in_language": int((in_lang & (y == 1)).sum()),
                     "nonspeech_segments": int((~in_lang).sum()),
                     "grounded_flagged": int((s[g] >= flag).sum()),
                     "grounded_flagged_rate": float((s[g] >= flag).mean()) if g.any() else float("nan"),
                     "auroc": evaluation.auroc(y, s), "auroc_in_language": evaluation.auroc(y[in_lang], s[in_lang])
                     if len(set(y[in_lang])) == 2 else float("nan"), "threshold": flag}
    return out


def _lolo_table(lolo: dict, family: str, hardcases: bool) -> list[str]:
    lines = [f"## Leave one language out ({family}, signature without encoder geometry)", "",
             "Fit on the train side without the language (English, the other three, non-speech); tested on every "
             "clip of the language plus the validation non-speech clips; threshold from the fit's own train "
             "out-of-fold scores." + (" Generated hard cases of the train side join each fit, except those built "
                                      "from the left-out language's recordings." if hardcases else ""), "",
             "| left out | clips | segments (grounded / hallucinated) | grounded flagged at the default | "
             "AUROC (with non-speech) | AUROC within the language |", "|---|---|---|---|---|---|"]
    for lang, m in lolo.items():
        lines.append(f"| {lang} | {m['clips']} | {m['segments']} ({m['grounded']} / {m['hallucinated_in_language']}) | "
                     f"{m['grounded_flagged']}/{m['grounded']} ({m['grounded_flagged_rate']:.1%}) | {m['auroc']:.3f} | "
                     f"{m['auroc_in_language']:.3f} |")
    return lines + [""]


def shipped_scores(model: str, rows: list[dict]) -> tuple[np.ndarray, dict[str, float]]:
    """The calibration on disk now (guard/calibration/<model>.json), applied to the cached features: the
    scores and thresholds a request gets today. The cached "score" is whatever calibration was in use at
    extraction time; pairing it with today's thresholds would mix two calibrations after a refit.
    (word_scores.py recomputes the segment score the same way.)"""
    from guard import score

    cal = score.load(model)
    return (cal.score([r["features"] for r in rows]) if rows else np.zeros(0)), dict(cal.thresholds)


def write_predictions(model: str, val: list[dict], fitted) -> Path:
    out = RESULTS / "raw" / f"predictions-{model}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    cal = fitted.calibration
    with open(out, "w", encoding="utf-8") as f:
        for r, s in zip(val, fitted.val_scores):
            verdict = "suppress" if s >= cal.thresholds["suppress"] else "flag" if s >= cal.thresholds["flag"] else "pass"
            f.write(json.dumps({"id": r["id"], "start": r["start"], "end": r["end"], "text": r["text"],
                                "score": float(s), "verdict": verdict, "avg_logprob": r["avg_logprob"],
                                "no_speech_prob": r["no_speech_prob"],
                                "compression_ratio": r["compression_ratio"]}) + "\n")
    return out


def _strata_tables(table: dict) -> list[str]:
    """One Markdown table per stratum: every detector's AUROC and TPR at 1% / 5% FPR."""
    lines = []
    for subset, dets in table.items():
        any_det = next(iter(dets.values()))
        lines += [f"## {subset} (n={any_det['n']}, hallucinated={any_det['hallucinated']})", "",
                  "| detector | AUROC | TPR @ 1% FPR | TPR @ 5% FPR |", "|---|---|---|---|"]
        for d, m in dets.items():
            lines.append(f"| {d} | {m['auroc']:.3f} | {m['tpr_at_fpr_1pct']:.3f} | {m['tpr_at_fpr_5pct']:.3f} |")
        lines.append("")
    return lines


def markdown(result: dict) -> str:
    lines = [f"# Detection: {result['model']} (validation clips only)", "",
             f"{result['guard_fit']['val_clips']} validation clips / {result['guard_fit']['val_segments']} segments "
             f"(fit on {result['guard_fit']['train_clips']} train clips); corpus {result['clips']} clips, "
             f"{result['segments']} segments, {result['hallucinated']} hallucinated.", ""]
    if result["model"].endswith(".en"):
        lines += ["English-only model: DEV's English clips and non-speech only (its other languages are out of "
                  "scope for tiny.en, as in the held-out check).", ""]
    fam = result["noenc_fit"]
    lines += [f"Shipped candidate's model family: **{fam['family']}** ({fam['selection']}). CV quality on train: "
              + ", ".join(f"{k} {v:.4f}" for k, v in fam["cv_quality"].items()) + ".", ""]
    if fam.get("travel"):
        lines += ["Travel check on train (each language held out of train in turn; its grounded train segments "
                  "flagged at the fit's own threshold): " + "; ".join(
                      f"{f} {t['grounded_flagged']}/{t['grounded']} ("
                      + ", ".join(f"{lang} {m['grounded_flagged']}/{m['grounded']}" for lang, m in t["languages"].items())
                      + ")" for f, t in fam["travel"].items()) + ".", ""]
    lines += _strata_tables(result["table"])
    for key, family in (("leave_one_language_out", "logistic"),
                        ("leave_one_language_out_shipped_family", result["noenc_fit"]["family"])):
        if result.get(key):
            lines += _lolo_table(result[key], family, bool(result.get("hardcase_segments", {}).get("train")))
    if result.get("hardcase_table"):
        lines += ["# Hard-case clips, validation side (benchmarks/hardcases.py)", ""]
        lines += _strata_tables(result["hardcase_table"])
    sci = result["science"]
    lines += [f"## Science check: cross-attention spectra by decoder layer (validation; grounded n={sci['n_grounded']}, "
              f"hallucinated n={sci['n_hallucinated']}; in clips that hold speech {sci['n_grounded_holds_speech']} / "
              f"{sci['n_hallucinated_holds_speech']})", "",
              "Medians, grounded -> hallucinated; change = hallucinated / grounded - 1; matched = the same change "
              "within token-count bins (1-3, 4-7, 8-15, 16+ tokens; weight = sum of the smaller class per bin); "
              "speech = matched, clips that hold speech only; AUROC of the quantity alone (lower rank, higher "
              "slope = hallucination). `pattern` = the attention maps, `out` = the cross-attention sublayer output "
              "(the activations SCIENCE.md's -12% / -13.4% figures are about).", "",
              "| layer | tensor | eff. rank | change | matched (w) | speech (w) | AUROC | slope | change | matched | "
              "speech | AUROC |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in sci["layers"]:
        for tensor in ("pattern", "out"):
            er, sl = row[f"{tensor}.eff_rank"], row[f"{tensor}.slope"]
            lines.append(
                f"| {row['layer']} | {tensor} | {er['grounded']:.2f} -> {er['hallucinated']:.2f} | {er['change']:+.1%} | "
                f"{er['length_matched_change']:+.1%} ({er['length_matched_weight']}) | "
                f"{er['holds_speech_length_matched_change']:+.1%} ({er['holds_speech_weight']}) | {er['auroc']:.3f} | "
                f"{sl['grounded']:.2f} -> {sl['hallucinated']:.2f} | {sl['change']:+.1%} | "
                f"{sl['length_matched_change']:+.1%} | {sl['holds_speech_length_matched_change']:+.1%} | "
                f"{sl['auroc']:.3f} |")
    lines += ["", "## Largest coefficients of the refit signature (standardised features)", "",
              "| feature | coefficient |", "|---|---|"]
    lines += [f"| {f} | {c:+.3f} |" for f, c in result["top_coefficients"][:15]]
    lines += ["", f"## What carries the shipped candidate's score ({result['noenc_fit']['family']}): mean |contribution| "
              "on validation, logits", "", "| feature | mean abs. contribution |", "|---|---|"]
    lines += [f"| {f} | {c:.3f} |" for f, c in result["shipped_carrying_features"]]
    lines.append("")
    lines += ["## Default policy (validation)", "", "| action | threshold | recall | false rate (grounded) | "
              "halluc. words removed | non-speech halluc. words removed | grounded words removed |",
              "|---|---|---|---|---|---|---|"]
    for action, m in [*((f"{a} (refit, {result['ship_candidate']})", m) for a, m in result["policy"].items()),
                      *((f"{a} (shipped calibration)", m) for a, m in result["shipped_policy"].items()),
                      *((f"{a} (baseline)", m) for a, m in result["baseline_policy"].items())]:
        lines.append(f"| {action} | {m['threshold']:.4f} | {m['recall']:.3f} | {m['false_rate_grounded']:.4f} | "
                     f"{m['hallucinated_words_removed']:.3f} | {m['nonspeech_hallucinated_words_removed']:.3f} | "
                     f"{m['grounded_words_removed']:.4f} |")
    return "\n".join(lines) + "\n"


def roc_plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no ROC plot (pip install '.[bench]')")
        return
    model, rows = result["model"], result["roc"]
    fig, ax = plt.subplots(figsize=(6, 5))
    for r in rows:
        ax.plot(r["fpr"], r["tpr"], label=f"{r['name']} ({r['auroc']:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.axvline(0.01, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("false positive rate (grounded segments flagged)")
    ax.set_ylabel("true positive rate (hallucinations caught)")
    ax.set_title(f"whisper-guard detection, {model}, validation clips")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def roc_points(y: np.ndarray, s: np.ndarray) -> tuple[list[float], list[float]]:
    order = np.argsort(-s, kind="mergesort")
    ys = y[order]
    tpr = np.concatenate([[0], np.cumsum(ys) / max(1, ys.sum())])
    fpr = np.concatenate([[0], np.cumsum(1 - ys) / max(1, (1 - ys).sum())])
    return fpr.tolist(), tpr.tolist()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=bench_dir(),
                    help="the corpus folder (default $WHISPER_GUARD_BENCH, else ../shared/bench): %(default)s")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--cache", type=Path, help=f"extraction cache (default {CACHE_DIR}/<model>-{FEATURE_SET}.jsonl)")
    ap.add_argument("--hardcases", type=Path, help="generated hard cases (benchmarks/hardcases.py): train side joins "
                    "the fit, validation side is reported apart")
    ap.add_argument("--hardcase-cache", type=Path, help="their extraction (default <hardcases>/<model>-<FEATURE_SET>.jsonl)")
    ap.add_argument("--skip-extract", action="store_true", help="evaluate what the cache holds")
    ap.add_argument("--write-calibration", action="store_true", help="ship the fitted score in guard/calibration/")
    ap.add_argument("--ship", choices=("no-encoder", "all"), default="no-encoder",
                    help="which refit the default policy numbers and --write-calibration use")
    ap.add_argument("--suffix", default="", help="appended to the output names (detection-<model><suffix>.*), "
                    "e.g. -dev-only for a run without --hardcases, so that it leaves the committed tables alone")
    a = ap.parse_args(argv)
    cache = a.cache or CACHE_DIR / f"{a.model}-{FEATURE_SET}.jsonl"
    hc_cache = a.hardcase_cache or (a.hardcases / f"{a.model}-{FEATURE_SET}.jsonl" if a.hardcases else None)
    if not a.skip_extract:
        extract(a.corpus, a.model, cache)

    np.seterr(all="ignore")
    result = evaluate(a.model, a.corpus, cache, a.write_calibration, a.hardcases, hc_cache, a.ship)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"detection-{a.model}{a.suffix}"
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "roc"}, indent=1, default=float))
    md = markdown(result)
    (RESULTS / f"{stem}.md").write_text(md)
    roc_plot(result, RESULTS / f"{stem}-roc.png")
    print(md)
    scorer = a.corpus / "score.py"
    if scorer.exists():
        pred = RESULTS / "raw" / f"predictions-{a.model}.jsonl"
        print("corpus scorer cross-check (validation predictions):")
        subprocess.run([sys.executable, str(scorer), str(a.corpus / "manifest.jsonl"), str(pred)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-word hallucination scores: extract, label, fit on DEV train, report on DEV validation.

    python benchmarks/word_scores.py --corpus ../shared/bench --model tiny.en [--write-calibration]

1. extract: every clip through the guard with word timestamps and features (resumable cache,
   benchmarks/.cache/words-<model>.jsonl; run it with `nice`, it takes a while on a shared host);
2. label words with the corpus rule, at word level: the clip's hypothesis words (each Whisper word
   normalised on its own) are aligned against the reference as `guard.labels.word_ops` does; a word
   is hallucinated when its normalised words are `ins` or `far`, or when it lies outside every
   speech interval widened by 1 s; words that normalise to nothing are not labelled;
3. split clips exactly as the detection benchmark does (guard.calibrate.split / groups_of);
4. fit a logistic word score on train (L2 and weight shares by grouped CV on train; thresholds from
   out-of-fold train scores: flag at 1% of grounded train words, suppress where the 95% upper bound
   of the share of grounded train words removed is <= 1%), report on validation beside two
   anchors: faster-whisper's word probability (as 1 - p) and the segment score broadcast to its
   words; AUROC and TPR at 1% FPR, overall and on the mixed case (segments holding both grounded
   and invented words); what word-level suppress removes;
   With --hardcases DIR, the short training hard cases (generated from DEV train recordings by
   benchmarks/hardcases.py, at most 30 s) are extracted too (benchmarks/.cache/words-hc-<model>.jsonl)
   and train beside DEV's train words; validation stays DEV's;
5. write benchmarks/results/words-score-<model>.{json,md} (+ guard/calibration/words-<model>.json for
   transcribed words, fitted on real words only, and words-verify-<model>.json for the words of a
   verified transcript, fitted on real words plus the generated verify cases).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from guard import evaluation  # noqa: E402
from guard.calibrate import group_folds, groups_of, split, transform_for, usable_features  # noqa: E402
from guard.corpus import bench_dir, read_manifest  # noqa: E402
from guard.labels import outside_speech, word_ops, words as norm_words  # noqa: E402
from guard.score import Calibration, balanced_weights, fit_logistic, standardised  # noqa: E402
from guard.words import add_relative, segment_context  # noqa: E402
from hardcases import join_recording_groups  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FLAG_FPR, SUPPRESS_FPR = 0.01, 0.005
# Suppress removes text, so its threshold must keep grounded words under the acceptance limit (1%)
# with confidence, not only on average: the 0.5% point estimate rests on ~3 of ~600 grounded train
# words. The suppress threshold is the lowest at which the one-sided 95% Clopper-Pearson upper bound
# of the out-of-fold train share of grounded words removed is <= 1% (and never below the 0.5% point).
SUPPRESS_LIMIT, SUPPRESS_CONFIDENCE = 0.01, 0.95
WORD_TRANSFORMS = {"word.probability": "logit", "word.attn_speech_mass": "logit", "word.vad_prob": "logit",
                   "word.vad_share": "logit", "seg.score": "logit", "word.duration": "log", "word.chars": "log",
                   "word.path_frames": "log", "word.speech_distance_s": "log", "word.attn_concentration": "logit"}


def extract(manifest: Path, model: str, cache: Path, limit: int | None = None,
            only: Callable[[dict], bool] | None = None) -> None:
    """Word features of the manifest's clips that `only` keeps (default: the model's population);
    resumable cache, a hash-ordered sample when limited."""
    from guard import corpus as runner
    from guard.config import Settings
    from guard.pipeline import Guard
    from guard.results import RequestOptions

    guard = Guard(Settings(model=model, max_concurrent=1))
    for _ in runner.run(guard, manifest, cache, limit=limit, progress=True,
                        options=RequestOptions(return_features=True, word_timestamps=True),
                        only=only or (lambda c: in_population(model, c))):
        pass


HARDCASE_MAX_SECONDS = 30.0  # the short hard cases (every kind but long-form): word extraction is costly


def hardcase_train(model: str, clip: dict) -> bool:
    """A generated hard case (benchmarks/hardcases.py) that may train the word score: built from DEV
    train recordings only, in the model's population, at most HARDCASE_MAX_SECONDS long."""
    return clip.get("side") == "train" and clip["duration"] <= HARDCASE_MAX_SECONDS and in_population(model, clip)


def in_population(model: str, clip: dict) -> bool:
    """An English-only model (tiny.en) is fitted and reported on English speech and non-speech, as in
    benchmarks/detection.py; a multilingual one on every clip."""
    return not model.endswith(".en") or clip.get("lang") in ("en", None)


# ---------------------------------------------------------------- generated mixed segments
FIXTURE_IDS = {"ast-en-agent-alreadyon", "spi-tabla-tun3", "gnome-logout", "mix-stn-d009"}  # tests/fixtures


def invented_sentence(clip_id: str, phrases: list[str]) -> str:
    """A phrase Whisper is known to invent (Bag of Hallucinations), picked by the clip id."""
    pick = phrases[int(hashlib.sha256(clip_id.encode()).hexdigest(), 16) % len(phrases)]
    return " " + pick[:1].upper() + pick[1:] + "."


def generate(corpus: Path, model: str, cache: Path, limit: int) -> None:
    """Verify cases built from DEV English speech clips: the true transcript with an invented
    sentence appended, one segment without times (so the words are labelled by construction).
    Clips copied into tests/fixtures are left out. Resumable like the extraction."""
    from guard import corpus as runner
    from guard.audio import decode_file
    from guard.config import Settings
    from guard.pipeline import Guard, load_phrases
    from guard.results import RequestOptions, TranscriptSegment

    phrases = sorted(p for p in load_phrases() if 2 <= len(p.split()) <= 8)
    clips = [c for c in read_manifest(corpus / "manifest.jsonl") if c["kind"] == "speech" and c.get("lang") == "en"
             and c["duration"] <= 25 and c.get("text") and c["id"] not in FIXTURE_IDS]
    clips.sort(key=lambda c: hashlib.sha256(c["id"].encode()).hexdigest())
    done = runner.done_ids(cache)
    todo = [c for c in clips[:limit] if c["id"] not in done]
    if not todo:
        return
    guard = Guard(Settings(model=model, max_concurrent=1))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache, "a", encoding="utf-8") as f:
        for k, clip in enumerate(todo, 1):
            true_text = " " + clip["text"].strip()
            text = true_text + invented_sentence(clip["id"], phrases)
            audio = decode_file(corpus / clip["audio"], max_seconds=60)
            result = guard.verify(audio, [TranscriptSegment(text=text)],
                                  RequestOptions(word_timestamps=True, return_features=True, language="en"))
            seg = result.segments[0]
            pos, words = 0, []
            for w in seg.words:
                words.append({"features": w.features, "probability": w.probability, "label": int(pos >= len(true_text))})
                pos += len(w.word)
            f.write(json.dumps({"id": clip["id"], "segment_score": seg.score, "words": words}, default=float) + "\n")
            f.flush()
            print(f"\rgenerated {k}/{len(todo)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def generated_rows(clips: dict[str, dict], cache: Path) -> list[dict]:
    rows = []
    if not cache.exists():
        return rows
    for line in cache.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        for w in rec["words"]:
            rows.append({"id": rec["id"], "segment": f"gen:{rec['id']}", "kind": "generated", "category": "verify-tail",
                         "label": w["label"], "features": w["features"], "probability": w["probability"],
                         "segment_score": rec["segment_score"]})
    return rows


# ---------------------------------------------------------------- labels
def label_words(model: str, clips: dict[str, dict], cache: Path) -> list[dict]:
    """One row per labelled word: features, label, the anchors, clip/segment identity.

    The segment score (a word feature, and the broadcast anchor) is recomputed from the cached
    segment features with the detection calibration shipped now: the one the guard will feed the
    word score at run time, whatever calibration the cache was extracted under."""
    from guard import score as scoring

    detection = scoring.load(model)
    rows = []
    for line in cache.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        clip = clips[rec["id"]]
        if not in_population(model, clip):
            continue
        lang = clip.get("lang")
        items = []  # (segment index, word dict, its normalised pieces)
        for si, seg in enumerate(sorted(rec["segments"], key=lambda s: (s["start"], s["end"]))):
            if seg.get("features"):
                seg = {**seg, "score": float(detection.score([seg["features"]])[0])}
                seg["words"] = [{**w, "features": {**w["features"], "seg.score": seg["score"]}}
                                if "features" in w else w for w in seg.get("words") or []]
            for w in seg.get("words") or []:
                items.append((si, seg, w, norm_words(w["word"], lang)))
        hyp = [p for *_, pieces in items for p in pieces]
        ops = word_ops(hyp, norm_words(clip.get("text", ""), lang)) if hyp else []
        by_segment = defaultdict(list)
        for si, seg, w, pieces in items:
            if "features" in w and not any(k.endswith(".vs_segment") for k in w["features"]):
                by_segment[si].append(w["features"])
        for rows_ in by_segment.values():  # caches written before the relative features existed
            add_relative(rows_)
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
# Shares of the training weight: words of real mixed segments (grounded and invented words in one
# segment), words of generated verify cases, and the rest. Chosen on out-of-fold train scores
# (`choose_shares`), never on validation.
SHARES = {"mixed": 0.3, "generated": 0.1}
ANCHOR = "seg.score"


def binomial_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen k times in n: the p with P(X <= k) = 1 - confidence."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection: P(X <= k) falls as p grows
        mid = (lo + hi) / 2
        cdf = sum(math.comb(n, i) * mid ** i * (1 - mid) ** (n - i) for i in range(k + 1))
        lo, hi = (mid, hi) if cdf > 1 - confidence else (lo, mid)
    return hi


def confident_threshold(grounded_scores: np.ndarray, limit: float, confidence: float) -> float:
    """The lowest threshold (words scoring >= it are removed) that removes only as many grounded
    words as keep the upper confidence bound of their share <= limit."""
    neg = np.sort(np.asarray(grounded_scores, dtype=np.float64))[::-1]
    n, k = len(neg), 0
    if n == 0:
        return float("-inf")
    while k + 1 < n and binomial_upper(k + 1, n, confidence) <= limit:
        k += 1
    if binomial_upper(k, n, confidence) > limit:  # too few grounded words to promise the limit
        return float(np.nextafter(neg[0], np.inf))
    return float(np.nextafter(neg[k], np.inf))


def _fit(model: str, rows: list[dict], features: list[str], l2: float, shares: dict | None = None) -> Calibration:
    """Logistic fit as guard.score.fit (standardised, transformed, balanced classes), with the words
    of mixed segments and of generated cases given fixed shares of the total weight: they are few,
    and they are what a word score adds over the segment score."""
    shares = SHARES if shares is None else shares
    feats = [r["features"] for r in rows]
    cal = standardised(f"words-{model}", feats, features, {f: WORD_TRANSFORMS.get(f, transform_for(f)) for f in features})
    y = np.array([r["label"] for r in rows], dtype=np.float64)
    w = balanced_weights(y)
    generated = np.array([r["kind"] == "generated" for r in rows])
    mixed = mixed_segments(rows) & ~generated
    pools = {"mixed": mixed, "generated": generated}
    rest = ~(mixed | generated)
    out = np.zeros(len(rows))
    total_share = 0.0
    for name, m in pools.items():
        if m.any() and shares.get(name, 0) > 0:
            out[m] = w[m] * shares[name] / w[m].sum()
            total_share += shares[name]
    out[rest] = w[rest] * (1 - total_share) / max(w[rest].sum(), 1e-12)
    # anchored: the segment score (itself a regularised calibration fitted on far more segments)
    # is not shrunk, so the word features fit corrections around it instead of replacing it
    free = np.array([f == ANCHOR for f in cal.features]) if shares.get("anchored") else None
    cal.coef, cal.intercept = fit_logistic(cal.design(feats), y, l2=l2, weights=out * len(y), unpenalised=free)
    return cal


def out_of_fold(model: str, rows: list[dict], features: list[str], groups: dict[str, str], l2: float,
                folds: int = 5, shares: dict | None = None) -> np.ndarray:
    fold = group_folds(rows, groups, folds)
    scores = np.zeros(len(rows))
    for k in range(folds):
        train = [r for r, f in zip(rows, fold) if f != k]
        idx = np.flatnonzero(fold == k)
        if len(idx) and len({r["label"] for r in train}) == 2:
            scores[idx] = _fit(model, train, features, l2, shares).score([rows[i]["features"] for i in idx])
    return scores


def usable(rows: list[dict]) -> list[str]:
    return usable_features(rows, sorted({k for r in rows for k in r["features"]}))


def mixed_segments(rows: list[dict]) -> np.ndarray:
    labels = defaultdict(set)
    for r in rows:
        labels[r["segment"]].add(r["label"])
    return np.array([labels[r["segment"]] == {0, 1} for r in rows])


def paired_auroc_gap(y: np.ndarray, a: np.ndarray, b: np.ndarray, clip_ids: list[str], rounds: int = 1000,
                     seed: int = 0) -> dict:
    """AUROC(a) - AUROC(b) on the same words, with a 95% interval from a bootstrap over clips (words
    of one clip are not independent)."""
    ids = np.array(clip_ids)
    uniq = np.unique(ids)
    members = [np.flatnonzero(ids == u) for u in uniq]
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(rounds):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        if len(set(y[idx])) == 2:
            gaps.append(evaluation.auroc(y[idx], a[idx]) - evaluation.auroc(y[idx], b[idx]))
    lo, hi = (np.percentile(gaps, [2.5, 97.5]) if gaps else (np.nan, np.nan))
    return {"gap": evaluation.auroc(y, a) - evaluation.auroc(y, b), "ci95": [float(lo), float(hi)],
            "clips": len(uniq), "rounds": len(gaps)}


def choose(model: str, train: list[dict], features: list[str], groups: dict[str, str], *, generated: bool
           ) -> tuple[float, dict, np.ndarray]:
    """L2 and weight shares by grouped out-of-fold scores on train: AUROC + TPR at 1% FPR on real
    words, on real mixed segments and (`generated`) on generated verify cases, plus the invented
    words word-level suppress removes at its own threshold (the confidence rule below), less the
    true words of generated cases it removes. Returns (l2, shares, out-of-fold scores)."""
    best, choice = -np.inf, None
    real = np.array([r["kind"] != "generated" for r in train])
    y_tr = np.array([r["label"] for r in train])
    mixed_tr = mixed_segments(train) & real
    grid = [(l2, m_share, g_share, anchored) for l2 in (3.0, 30.0, 300.0) for m_share in (0.0, 0.2, 0.4)
            for g_share in ((0.0, 0.1, 0.3) if generated else (0.0,)) for anchored in (False, True)]
    for l2, m_share, g_share, anchored in grid:
        shares = {"mixed": m_share, "generated": g_share, "anchored": anchored}
        s = out_of_fold(model, train, features, groups, l2, shares=shares)
        q = sum(evaluation.auroc(y_tr[m], s[m]) + evaluation.tpr_at_fpr(y_tr[m], s[m], 0.01)
                for m in (real, mixed_tr, ~real) if m.any() and len(set(y_tr[m])) == 2)
        t = confident_threshold(s[real & (y_tr == 0)], SUPPRESS_LIMIT, SUPPRESS_CONFIDENCE)
        q += sum(float((s[m & (y_tr == 1)] >= t).mean()) for m in (real, ~real) if (m & (y_tr == 1)).any())
        if (~real & (y_tr == 0)).any():
            q -= float((s[~real & (y_tr == 0)] >= t).mean())
        if q > best:
            best, choice = q, (l2, shares, s)
    return choice


def fit_calibration(model: str, name: str, train: list[dict], features: list[str], groups: dict[str, str], *,
                    generated: bool) -> tuple[Calibration, np.ndarray]:
    """The chosen fit on all of train, its thresholds from out-of-fold train scores of real words:
    flag at 1% of grounded words, suppress at the confidence rule. Returns (calibration, oof)."""
    l2, shares, oof = choose(model, train, features, groups, generated=generated)
    real = np.array([r["kind"] != "generated" for r in train])
    y_tr = np.array([r["label"] for r in train])
    cal = _fit(model, train, features, l2, shares)
    cal.model = name
    flag_t = float(np.nextafter(evaluation.threshold_at_fpr(y_tr[real], oof[real], FLAG_FPR), 1.0))
    sup_t = float(np.nextafter(evaluation.threshold_at_fpr(y_tr[real], oof[real], SUPPRESS_FPR), 1.0))
    sup_t = max(sup_t, confident_threshold(oof[real & (y_tr == 0)], SUPPRESS_LIMIT, SUPPRESS_CONFIDENCE))
    cal.thresholds = {"flag": min(max(flag_t, 0.0), 1.0), "suppress": min(max(sup_t, flag_t, 0.0), 1.0)}
    cal.meta = {"split": "guard.calibrate.split (as benchmarks/detection.py)", "l2": l2, "shares": shares,
                "train_words": len(train), "generated_train_words": int((~real).sum()),
                "thresholds_from": "out-of-fold train scores of real words",
                "labels": "corpus rule at word level (benchmarks/word_scores.py)"}
    return cal, oof


def policy_rates(cal: Calibration, val: list[dict], score: np.ndarray, mixed: np.ndarray, oof: np.ndarray,
                 train: list[dict], gen_val: list[dict], gen_score: np.ndarray | None) -> dict:
    y = np.array([r["label"] for r in val])
    real = np.array([r["kind"] != "generated" for r in train])
    y_tr = np.array([r["label"] for r in train])
    share = lambda hit, m: float(hit[m].mean()) if m.any() else None  # noqa: E731
    out = {}
    for action in ("flag", "suppress"):
        hit = score >= cal.thresholds[action]
        oof_hit = oof[real] >= cal.thresholds[action]
        out[action] = {"threshold": cal.thresholds[action],
                       "train_oof_hallucinated_removed": share(oof_hit, y_tr[real] == 1),
                       "train_oof_grounded_removed": share(oof_hit, y_tr[real] == 0),
                       "hallucinated_words_removed": share(hit, y == 1), "grounded_words_removed": share(hit, y == 0),
                       "grounded_removed_count": [int(hit[y == 0].sum()), int((y == 0).sum())],
                       "mixed_hallucinated_removed": share(hit, mixed & (y == 1)),
                       "mixed_grounded_removed": share(hit, mixed & (y == 0))}
        if gen_val and gen_score is not None:
            yg = np.array([r["label"] for r in gen_val])
            g_hit = gen_score >= cal.thresholds[action]
            out[action]["generated_hallucinated_removed"] = share(g_hit, yg == 1)
            out[action]["generated_grounded_removed"] = share(g_hit, yg == 0)
    return out


def hardcase_rows(model: str, hardcases: Path, cache: Path, clips: dict[str, dict], side: dict[str, str],
                  groups: dict[str, str]) -> list[dict]:
    """Labelled words of the training hard cases in `cache`. Each hard case joins the group of the
    DEV speech recording it was built from (the out-of-fold folds never split a recording); one built
    from a validation recording is an error."""
    hc_clips = {c["id"]: c for c in read_manifest(hardcases / "manifest.jsonl") if hardcase_train(model, c)}
    join_recording_groups(hc_clips, clips, side, groups)
    rows = label_words(model, hc_clips, cache)
    for r in rows:
        r["source"] = "hardcase"
    return rows


def evaluate(model: str, corpus: Path, cache: Path, write_calibration: bool, generated: Path | None = None,
             hardcases: tuple[Path, Path] | None = None) -> dict:
    """Two word calibrations: `words-<model>` for transcribed words (fitted on real words only) and
    `words-verify-<model>` for the words of a verified transcript (real words plus generated verify
    cases: there the segment score says little about which words were invented).

    Real training words are DEV train clips' and, with `hardcases` = (directory, word cache), those of
    the short training hard cases, treated like DEV train words throughout (fit, selection,
    thresholds); validation is DEV validation only."""
    clips = {c["id"]: c for c in read_manifest(corpus / "manifest.jsonl")}
    rows = label_words(model, clips, cache)
    side, groups = split(clips), groups_of(clips)
    gen = generated_rows(clips, generated) if generated else []
    gen_train = [r for r in gen if side[r["id"]] == "train"]
    gen_val = [r for r in gen if side[r["id"]] == "val"]
    hc = hardcase_rows(model, *hardcases, clips, side, groups) if hardcases and hardcases[1].exists() else []
    real_train = [r for r in rows if side[r["id"]] == "train"] + hc
    val = [r for r in rows if side[r["id"]] == "val"]
    features = usable(real_train + gen_train)
    cal, oof = fit_calibration(model, f"words-{model}", real_train, features, groups, generated=False)
    verify_train = real_train + gen_train
    vcal, voof = fit_calibration(model, f"words-verify-{model}", verify_train, features, groups, generated=True) \
        if gen_train else (None, None)
    y = np.array([r["label"] for r in val])
    detectors = {"whisper-guard word score": cal.score([r["features"] for r in val]),
                 "faster-whisper word probability (1 - p)": 1.0 - np.array([r["probability"] for r in val]),
                 "segment score broadcast to words": np.array([r["segment_score"] for r in val])}
    subsets = {"all": np.ones(len(val), bool), "mixed segments (grounded + invented words)": mixed_segments(val),
               **{f"kind={k}": np.array([r["kind"] == k for r in val]) for k in sorted({r["kind"] for r in val})}}
    table = {name: {d: evaluation.summary(y[m], s[m]) for d, s in detectors.items()}
             for name, m in subsets.items() if m.sum()}
    gen_score = None
    if gen_val and vcal is not None:
        yg = np.array([r["label"] for r in gen_val])
        gen_score = vcal.score([r["features"] for r in gen_val])
        table["generated verify cases: true text + invented sentence (validation clips)"] = {
            "whisper-guard word score (verify word calibration)": evaluation.summary(yg, gen_score),
            "whisper-guard word score (transcribe word calibration)": evaluation.summary(
                yg, cal.score([r["features"] for r in gen_val])),
            "faster-whisper word probability (1 - p)": evaluation.summary(yg, 1 - np.array([r["probability"] for r in gen_val])),
            "segment score broadcast to words": evaluation.summary(yg, np.array([r["segment_score"] for r in gen_val]))}
    score = detectors["whisper-guard word score"]
    paired = {name: paired_auroc_gap(y[m], score[m], detectors["segment score broadcast to words"][m],
                                     [r["id"] for r, k in zip(val, m) if k])
              for name, m in subsets.items() if len(set(y[m])) == 2}
    mixed = subsets["mixed segments (grounded + invented words)"]
    policy = policy_rates(cal, val, score, mixed, oof, real_train, [], None)
    verify_policy = policy_rates(vcal, val, vcal.score([r["features"] for r in val]), mixed, voof, verify_train,
                                 gen_val, gen_score) if vcal is not None else None
    coef = sorted(zip(cal.features, cal.coef), key=lambda t: -abs(t[1]))
    result = {"model": model, "clips": len({r["id"] for r in rows}), "words": len(rows),
              "generated_train_words": len(gen_train), "generated_val_words": len(gen_val),
              "hardcase_train_clips": len({r["id"] for r in hc}), "hardcase_train_words": len(hc),
              "hardcase_train_hallucinated": int(sum(r["label"] for r in hc)),
              "hallucinated_words": int(sum(r["label"] for r in rows)), "train_words": len(real_train),
              "val_words": len(val), "l2": cal.meta["l2"], "shares": cal.meta["shares"],
              "verify_l2": vcal.meta["l2"] if vcal else None, "verify_shares": vcal.meta["shares"] if vcal else None,
              "features": features, "thresholds": cal.thresholds,
              "verify_thresholds": vcal.thresholds if vcal else None,
              "table": table, "paired_gap_vs_broadcast": paired, "policy": policy, "verify_policy": verify_policy,
              "top_coefficients": [[f, float(c)] for f, c in coef[:15]]}
    if write_calibration:
        written = []
        for c in (cal, vcal):
            if c is not None:
                path = ROOT / "guard" / "calibration" / f"{c.model}.json"
                path.write_text(json.dumps(c.to_json(), indent=1))
                written.append(str(path.relative_to(ROOT)))
        result["calibration_written"] = written
    return result


def markdown(r: dict) -> str:
    lines = [f"# Word-level hallucination scores: {r['model']}", "",
             f"{r['clips']} DEV clips, {r['words']} labelled words ({r['hallucinated_words']} hallucinated); "
             f"fit on {r['train_words']} train words, reported on {r['val_words']} validation words "
             "(grouped split of benchmarks/detection.py). Thresholds from out-of-fold train scores. Two "
             f"calibrations: `words-{r['model']}` scores transcribed words and is fitted on real DEV words only "
             f"(L2 {r['l2']}, shares {r['shares']}); `words-verify-{r['model']}` scores the words of a verified "
             f"transcript and is fitted on them plus {r.get('generated_train_words', 0)} words of generated verify "
             "cases (a train clip's true transcript + an invented sentence; "
             f"L2 {r.get('verify_l2')}, shares {r.get('verify_shares')}). The validation clips' generated cases "
             f"({r.get('generated_val_words', 0)} words) are reported on their own row."
             + (f" Real train words include {r['hardcase_train_words']} words ({r['hardcase_train_hallucinated']} "
                f"hallucinated) of {r['hardcase_train_clips']} generated hard cases built from DEV train recordings "
                "(benchmarks/HARDCASES.md; clips up to 30 s), treated like DEV train words; validation is DEV only."
                if r.get("hardcase_train_words") else ""), "",
             "| subset | detector | n | hallucinated | AUROC | TPR@1%FPR | TPR@5%FPR |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, dets in r["table"].items():
        for d, s in dets.items():
            lines.append(f"| {name} | {d} | {s['n']} | {s['hallucinated']} | {s['auroc']:.4f} | "
                         f"{s['tpr_at_fpr_1pct']:.3f} | {s['tpr_at_fpr_5pct']:.3f} |")
    if r.get("paired_gap_vs_broadcast"):
        lines += ["", "Word score minus the segment score broadcast, AUROC on the same validation words, with a 95% "
                  "interval from a bootstrap over clips (1000 rounds):", "",
                  "| subset | AUROC gap | 95% interval | clips |", "|---|---:|---:|---:|"]
        for name, g in r["paired_gap_vs_broadcast"].items():
            lines.append(f"| {name} | {g['gap']:+.5f} | [{g['ci95'][0]:+.5f}, {g['ci95'][1]:+.5f}] | {g['clips']} |")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for title, pol in (("transcribed words (`words-" + r["model"] + "`)", r["policy"]),
                       ("verified words (`words-verify-" + r["model"] + "`)", r.get("verify_policy"))):
        if not pol:
            continue
        lines += ["", f"Word-level policy on validation, {title} (share of words whose verdict removes them). Flag: "
                  "1% of grounded out-of-fold train words; suppress: the lowest threshold at which the one-sided 95% "
                  "upper bound of the out-of-fold train share of grounded words removed is <= 1%:", "",
                  "| action | threshold | hallucinated removed | grounded removed | mixed: hallucinated | mixed: grounded "
                  "| generated verify cases: invented / true | train out-of-fold: hallucinated / grounded |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for a, p in pol.items():
            k, n = p.get("grounded_removed_count", [None, None])
            lines.append(f"| {a} | {p['threshold']:.3f} | {fmt(p['hallucinated_words_removed'])} | "
                         f"{fmt(p['grounded_words_removed'])} ({k}/{n}) | {fmt(p['mixed_hallucinated_removed'])} | "
                         f"{fmt(p['mixed_grounded_removed'])} | {fmt(p.get('generated_hallucinated_removed'))} / "
                         f"{fmt(p.get('generated_grounded_removed'))} | {fmt(p.get('train_oof_hallucinated_removed'))} / "
                         f"{fmt(p.get('train_oof_grounded_removed'))} |")
    lines += ["", "Largest coefficients: " + ", ".join(f"`{f}` {c:+.2f}" for f, c in r["top_coefficients"][:10]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=bench_dir())
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--extract-only", action="store_true")
    ap.add_argument("--generate", type=int, default=0, help="also build N verify cases (true text + invented)")
    ap.add_argument("--write-calibration", action="store_true")
    ap.add_argument("--skip-extract", action="store_true", help="fit and report on what the caches hold")
    ap.add_argument("--hardcases", type=Path, help="generated hard cases (benchmarks/hardcases.py): their short "
                    "training clips also train the word score")
    ap.add_argument("--hardcase-limit", type=int, help="extract at most N of them (a hash-ordered sample)")
    args = ap.parse_args(argv)
    cache = HERE / ".cache" / f"words-{args.model}.jsonl"
    generated = HERE / ".cache" / f"words-generated-{args.model}.jsonl"
    hc_cache = HERE / ".cache" / f"words-hc-{args.model}.jsonl"
    if args.generate and not args.skip_extract:
        generate(args.corpus, args.model, generated, args.generate)
    if not args.skip_extract and (not args.extract_only or not args.generate):
        extract(args.corpus / "manifest.jsonl", args.model, cache, args.limit)
    if args.hardcases and not args.skip_extract:
        extract(args.hardcases / "manifest.jsonl", args.model, hc_cache, args.hardcase_limit,
                only=lambda c: hardcase_train(args.model, c))
    if args.extract_only:
        return 0
    result = evaluate(args.model, args.corpus, cache, args.write_calibration, generated,
                      (args.hardcases, hc_cache) if args.hardcases else None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"words-score-{args.model}.json").write_text(json.dumps(result, indent=1, default=float))
    md = markdown(result)
    (RESULTS / f"words-score-{args.model}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`lang.prob` and `lang.margin` for feature caches extracted before the guard computed them (research code).

    python benchmarks/language_backfill.py --model base --manifest ../shared/bench/manifest.jsonl \
        --cache ~/.cache/whisper-guard/bench/base-sig2.jsonl

The features are the model's probability for the language it decodes in and its lead over the next
language, read once from the first 30 s window (guard.asr.Transcriber.detect_language). A clip's values
need only that window's encoder pass, not the whole extraction, so for every clip of the cache whose
segments lack one this script encodes the first window exactly as guard.asr.Transcriber.decode_window
does, asks the same detection, and appends {"id", "lang.prob", "lang.margin"} to a side file next to the
cache (<cache stem>.lang.jsonl; resumable). `detection.load_rows` fills what a cached segment lacks from
it; a value a segment already carries is never touched.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FEATURES = ("lang.prob", "lang.margin")


def side_file(cache: Path) -> Path:
    return cache.with_name(cache.stem + ".lang.jsonl")


def read(cache: Path) -> dict[str, dict[str, float]]:
    """The backfilled values of a cache ({} when it has none); a line cut short is skipped (and redone)."""
    path = side_file(cache)
    out: dict[str, dict[str, float]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                out[row["id"]] = {f: float(row[f]) for f in FEATURES}
            except (ValueError, KeyError, TypeError):
                continue
    return out


def fill(segments: list[dict], values: dict[str, dict[str, float]]) -> int:
    """Set each feature a cached segment lacks, from `values`; how many values were set."""
    n = 0
    for s in segments:
        feats = s.get("features")
        if feats is None or s["id"] not in values:
            continue
        for f in FEATURES:
            if f not in feats:
                feats[f] = values[s["id"]][f]
                n += 1
    return n


def missing(cache: Path) -> list[str]:
    """Clips of the cache with a segment that lacks one of the features (a clip with no segment needs none)."""
    from guard.corpus import load

    segments, _ = load(cache)
    return sorted({s["id"] for s in segments if any(f not in (s.get("features") or {}) for f in FEATURES)})


def language_confidence(transcriber, audio) -> dict[str, float]:
    """The first window's values, the way decode_window reads them for a request without a language."""
    from guard.asr import WINDOW_SAMPLES

    encoded, _, _ = transcriber.encode(audio[:WINDOW_SAMPLES])
    _, prob, margin = transcriber.detect_language(encoded)
    return dict(zip(FEATURES, (prob, margin)))


def main(argv: list[str] | None = None) -> int:
    from guard.audio import decode_file
    from guard.asr import Transcriber
    from guard.config import Settings
    from guard.corpus import read_manifest
    from guard.models import resolve

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True, help="the feature cache (<model>-<FEATURE_SET>.jsonl)")
    ap.add_argument("--limit", type=int, help="at most this many clips")
    a = ap.parse_args(argv)
    clips = {c["id"]: c for c in read_manifest(a.manifest)}
    done = read(a.cache)
    todo = [cid for cid in missing(a.cache) if cid not in done and cid in clips][: a.limit]
    print(f"{len(todo)} clips to backfill into {side_file(a.cache)}", flush=True)
    if not todo:
        return 0
    settings = Settings(model=a.model, max_concurrent=1)
    transcriber = Transcriber(resolve(a.model, cache=settings.model_cache), settings)
    t0 = time.perf_counter()
    with open(side_file(a.cache), "a", encoding="utf-8") as f:
        for k, cid in enumerate(todo, 1):
            audio = decode_file(a.manifest.parent / clips[cid]["audio"], max_seconds=3600)  # guard.corpus.run's limit
            f.write(json.dumps({"id": cid, **language_confidence(transcriber, audio)}) + "\n")
            f.flush()
            if k % 100 == 0 or k == len(todo):
                print(f"{k}/{len(todo)} clips in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

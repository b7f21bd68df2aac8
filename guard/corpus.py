"""Run a corpus manifest (the format of `../shared/bench/manifest.jsonl`) through a loaded guard.

One JSON line per clip comes out, holding its segments (with features when asked), so a run can
be resumed: clips already in the output file are skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from guard.audio import decode_file
from guard.pipeline import Guard
from guard.results import GuardResult, RequestOptions, word_json


BENCH_ENV = "WHISPER_GUARD_BENCH"


def bench_dir() -> Path:
    """Where the benchmark corpus lives: $WHISPER_GUARD_BENCH, else `../shared/bench` beside the
    checkout. The one place the corpus location is decided (benchmarks and tests read it here);
    a public clone has no corpus, and everything that needs one skips or says so."""
    env = os.environ.get(BENCH_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "bench"


def read_manifest(path: Path) -> list[dict]:
    """Clips of a manifest; `audio` paths are relative to the manifest's folder."""
    clips = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            clip = json.loads(line)
        except ValueError as e:
            raise SystemExit(f"{path}:{n}: not JSON: {e}") from None
        for key in ("id", "audio"):
            if key not in clip:
                raise SystemExit(f"{path}:{n}: clip has no {key!r}")
        clips.append(clip)
    return clips


def segment_rows(clip_id: str, result: GuardResult) -> list[dict]:
    return [{"id": clip_id, "start": s.segment.start, "end": s.segment.end, "text": s.segment.text,
             "window": s.segment.window, "score": s.score, "verdict": s.verdict.value,
             "avg_logprob": s.segment.avg_logprob, "no_speech_prob": s.segment.no_speech_prob,
             "compression_ratio": s.segment.compression_ratio,
             **({"features": s.features} if s.features is not None else {}),
             **({"words": [word_json(w) for w in s.words]} if s.words is not None else {})} for s in result.segments]


def done_ids(out: Path) -> set[str]:
    if not out.exists():
        return set()
    ids = set()
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(json.loads(line)["id"])
        except (ValueError, KeyError):
            continue  # a line cut short by an interrupted run is redone
    return ids


def run(guard: Guard, manifest: Path, out: Path, *, options: RequestOptions, max_seconds: float = 3600,
        limit: int | None = None, progress: bool | None = None,
        only: Callable[[dict], bool] | None = None) -> Iterator[dict]:
    """Transcribe every clip not yet in `out` (of those `only` keeps), appending one line per clip;
    yields those lines."""
    clips = [c for c in read_manifest(manifest) if only is None or only(c)]
    clips.sort(key=lambda c: hashlib.sha256(c["id"].encode()).hexdigest())  # any prefix is a fair sample
    if limit:
        clips = clips[:limit]
    skip = done_ids(out)
    todo = [c for c in clips if c["id"] not in skip]
    show = sys.stderr.isatty() if progress is None else progress
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, audio_s = time.perf_counter(), 0.0
    with open(out, "a", encoding="utf-8") as f:
        for k, clip in enumerate(todo, 1):
            audio = decode_file(Path(manifest).parent / clip["audio"], max_seconds=max_seconds)
            result = guard.transcribe(audio, options)
            line = {"id": clip["id"], "duration": result.audio_seconds, "timings": result.timings,
                    "segments": segment_rows(clip["id"], result)}
            f.write(json.dumps(line, default=float) + "\n")
            f.flush()
            audio_s += result.audio_seconds
            if show:
                el = time.perf_counter() - t0
                bar = "#" * int(30 * k / len(todo))
                print(f"\r[{bar:<30}] {k}/{len(todo)} clips  {audio_s / 60:.1f} min audio  RTF "
                      f"{el / max(audio_s, 1e-9):.3f}", end="", file=sys.stderr, flush=True)
            yield line
    if show and todo:
        print(file=sys.stderr)


def load(out: Path) -> tuple[list[dict], dict[str, dict]]:
    """(all segments, per-clip duration and timings) from a run's output."""
    segments, info = [], {}
    for line in Path(out).read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted run (done_ids redoes that clip)
            info[row["id"]] = {"timings": row["timings"], "duration": row["duration"]}
            segments += row["segments"]
    return segments, info

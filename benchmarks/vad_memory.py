"""Memory of the guard's Silero VAD: faster-whisper's one-run-per-window batching against VAD_BATCH.

    python benchmarks/vad_memory.py [--threads 1 2 4] [--windows 5] [--suffix=-round7]

faster-whisper feeds Silero up to 10,000 chunks of 32 ms in one session run: a whole 30 s window
(938 chunks). The guard (guard.acoustic) feeds VAD_BATCH chunks at a time and carries the
recurrent state between runs; the probabilities are bit for bit the same. The session keeps ONNX
Runtime's memory arena (faster-whisper turns it off, which costs time), so an arena grows to the
largest activations alive at once: one per concurrent window.

Each configuration runs in a fresh process: N threads each run the VAD over the same 30 s window
W times. Reported: the growth of the process's peak RSS (VmHWM) over a warmed-up session, and
milliseconds of wall time per window. The first check compares the two batchings' probabilities.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from whole_process import _peak_self_mb as peak_rss_mb  # VmHWM of this process, MB

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FASTER_WHISPER_BATCH = 10_000  # faster_whisper.vad.SileroVADModel's encoder batch
WINDOW = 30 * 16000


def _window() -> tuple[np.ndarray, str]:
    from guard.audio import decode_file
    from guard.corpus import bench_dir

    bench = bench_dir()
    manifest = bench / "manifest.jsonl"
    if manifest.is_file():
        rows = sorted((json.loads(x) for x in manifest.read_text().splitlines() if x.strip()), key=lambda r: r["id"])
        for r in rows:
            if r["kind"] == "mixture" and r["duration"] >= 30:
                return decode_file(bench / r["audio"], max_seconds=600)[:WINDOW], f"DEV {r['id']}"
    f = ROOT / "tests" / "fixtures" / "mixture-speech-then-music-36s.flac"
    return decode_file(f, max_seconds=600)[:WINDOW], f"tests/fixtures/{f.name}"


def child(batch: int, threads: int, windows: int) -> dict:
    from guard import acoustic

    acoustic.VAD_BATCH = batch
    audio, source = _window()
    vad = acoustic.VoiceActivity()
    vad.evidence(audio[:16000])  # the session's first run, outside the measurement
    before = peak_rss_mb()

    def work() -> None:
        for _ in range(windows):
            vad.evidence(audio)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    return {"batch": batch, "threads": threads, "windows": windows, "source": source,
            "peak_rss_growth_mb": peak_rss_mb() - before, "ms_per_window": wall / (threads * windows) * 1e3}


def same_probabilities() -> bool:
    from guard import acoustic

    audio, _ = _window()
    vad = acoustic.VoiceActivity()
    clip = np.pad(audio, (0, (-len(audio)) % acoustic.VAD_CHUNK)).astype(np.float32)
    ours, batch = vad.model(clip), acoustic.VAD_BATCH
    acoustic.VAD_BATCH = FASTER_WHISPER_BATCH
    try:
        theirs = vad.model(clip)
    finally:
        acoustic.VAD_BATCH = batch
    return bool(np.array_equal(ours, theirs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per configuration (medians)")
    ap.add_argument("--suffix", default="")
    ap.add_argument("--child", nargs=3, type=int, metavar=("BATCH", "THREADS", "WINDOWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from guard.acoustic import VAD_BATCH

    equal = same_probabilities()
    print(f"probabilities with {VAD_BATCH} and {FASTER_WHISPER_BATCH} chunks a run are identical: {equal}")
    rows = []
    for threads in args.threads:
        runs: dict[int, list[dict]] = {FASTER_WHISPER_BATCH: [], VAD_BATCH: []}
        for _ in range(args.repeats):  # the two batchings interleaved
            for batch in runs:
                out = subprocess.run([sys.executable, __file__, "--child", str(batch), str(threads), str(args.windows)],
                                     capture_output=True, text=True, check=True, cwd=ROOT)
                runs[batch].append(json.loads(out.stdout.strip().splitlines()[-1]))
        for batch, rs in runs.items():
            row = {**rs[0], "peak_rss_growth_mb": statistics.median(r["peak_rss_growth_mb"] for r in rs),
                   "ms_per_window": statistics.median(r["ms_per_window"] for r in rs), "repeats": len(rs)}
            rows.append(row)
            print(f"{threads} thread(s), {batch:>5} chunks a run: peak RSS +{row['peak_rss_growth_mb']:.0f} MB, "
                  f"{row['ms_per_window']:.0f} ms a window")
    result = {"vad_batch": VAD_BATCH, "faster_whisper_batch": FASTER_WHISPER_BATCH, "identical": equal, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"vad-memory{args.suffix}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Silero VAD memory: chunks per session run", "",
             f"Window: 30 s of {rows[0]['source']}; {args.windows} windows per thread, medians of {args.repeats} "
             f"fresh processes, the two batchings interleaved. Probabilities identical: {equal}.", "",
             "| threads | chunks a run | peak RSS growth MB | ms a window |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['threads']} | {r['batch']} | {r['peak_rss_growth_mb']:.0f} | {r['ms_per_window']:.0f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()

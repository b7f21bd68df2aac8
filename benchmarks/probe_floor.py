"""The floor under any teacher-forced re-run: CTranslate2's own int8 decoder pass against plain decoding.

    python benchmarks/probe_floor.py --model tiny.en --repeats 5
    python benchmarks/probe_floor.py --model base --repeats 5

Issue 15 asks the guard to cost at most 1.05x plain faster-whisper in process. The guard's analysis
re-runs the decoder teacher-forced over each window's prompt and emitted tokens. This script asks
what the cheapest such re-run costs on this machine, whatever reads it afterwards:

  plain   `WhisperModel.transcribe` with the guard's decoding settings (`overhead.decode_kwargs`)
  align   CTranslate2's `Whisper.align` over the same windows: one teacher-forced pass of its int8
          decoder over the window's own prompt (previous text included) and emitted tokens, reading
          only the alignment heads, given the encoder output (the encoder is not re-run: plain paid
          it). It is faster-whisper's word-timestamp pass; nothing here is cheaper than it: same
          engine and threads as plain, int8, no per-head attention copied out, no signature
  probe   the guard's own probe (ONNX Runtime, float32, every layer's and head's attention, its
          default one intra-op thread) over the same windows and rows as `guard.pipeline`
  vad     Silero VAD over each window's samples, as the guard runs it (`guard.acoustic`)

and one analytic floor, `kv`: the cross-attention key and value projections of all 1500 encoder frames
in every decoder layer (2 x frames x d_model x 2 d_model flops per layer and window), which reading
every head's attention and every layer's cross-attention output cannot avoid, at this machine's own
single-thread float32 GEMM rate on that very shape (numpy's BLAS, one thread, best of 20). It counts
nothing else: no token rows, no vocabulary projection, no softmax, no VAD, no signature.

Everything runs in one process on one CTranslate2 model (two models in one process make libgomp
throttle both: README, performance round 9); the windows come from the guard's own decode loop
(`guard.asr.Transcriber.windows`), which writes the same tokens as plain on the fixtures. Variants
are interleaved per clip and repeat; the ratios are medians over repeats of the per-repeat ratio of
summed times. Clips: `overhead.pick_clips` (one ~5 s, one ~30 s, one 150 s by default).

Writes benchmarks/results/probe-floor-<model>-cpu{suffix}.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ctranslate2  # noqa: E402

from guard.acoustic import VoiceActivity  # noqa: E402
from guard.asr import DecodeState, Transcriber  # noqa: E402
from guard.config import Settings  # noqa: E402
from guard.models import resolve  # noqa: E402
from guard.probe.runner import Probe  # noqa: E402
from overhead import BENCH, RESULTS, decode_kwargs, pick_clips  # noqa: E402

VARIANTS = ("plain", "align", "probe", "vad")


def gemm_rate(frames: int, d: int) -> float:
    """flop/s of one [frames, d] @ [d, 2d] float32 product on one BLAS thread (best of 20)."""
    from guard import blas

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((frames, d), np.float32), rng.standard_normal((d, 2 * d), np.float32)
    best = float("inf")
    with blas.single_threaded():
        for _ in range(20):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2.0 * frames * d * 2 * d / best


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


class Floor:
    def __init__(self, model: str):
        self.settings = Settings(model=model, device="cpu", max_concurrent=1)
        resolved = resolve(model, cache=self.settings.model_cache)
        with ThreadPoolExecutor(max_workers=1) as loader:  # loaded on a thread, as the guard and overhead.py do
            self.tr = loader.submit(Transcriber, resolved, self.settings).result()
        self.probe = Probe(resolved.path / "model.bin", device="cpu", threads=self.settings.probe_threads,
                           cache=self.settings.model_cache, model_sha=resolved.sha256 or None)
        self.vad = VoiceActivity()
        self.kwargs = decode_kwargs(self.settings)
        self.options = self.tr.options(language="en")
        self.eot = self.tr.tokenizer("en").eot

    def windows(self, audio: np.ndarray) -> list:
        return list(self.tr.windows(audio, DecodeState(), self.options, "en", final=True))

    def plain(self, audio: np.ndarray):
        segments, _ = self.tr.whisper.transcribe(audio, **self.kwargs)
        return [s.text.strip() for s in segments if s.text.strip()]

    def align(self, windows: list):
        out = []
        for w in windows:
            if not w.tokens:
                continue
            view = ctranslate2.StorageView.from_array(np.ascontiguousarray(w.encoder_output[None]))
            out.append(self.tr.ct2.align(view, list(w.prompt), [list(w.tokens)], w.n_frames)[0])
        return out

    def probe_rows(self, w) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The rows `guard.pipeline._probe` scores: positions that predict the text tokens."""
        tokens = np.asarray(w.tokens)
        text = np.flatnonzero(tokens < self.eot)
        rows = len(w.prompt) - 1 + (text if len(text) else np.arange(len(tokens)))
        seq = list(w.prompt) + list(w.tokens)
        return seq[: int(rows.max()) + 1], rows, np.asarray(seq, dtype=np.int64)[rows + 1]

    def run_probe(self, windows: list):
        for w in windows:
            if not w.tokens:
                continue
            seq, rows, targets = self.probe_rows(w)
            self.probe.run(seq, w.encoder_output, rows, targets, pattern_rows=rows)

    def run_vad(self, windows: list):
        for w in windows:
            self.vad.evidence(w.audio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--short", type=int, default=1)
    ap.add_argument("--thirty", type=int, default=1)
    ap.add_argument("--long", type=float, nargs="*", default=[150.0])
    ap.add_argument("--suffix", default="")
    args = ap.parse_args()

    floor = Floor(args.model)
    clips = pick_clips(BENCH, args.short, args.thirty, args.long)
    # warm every path once; the windows (encoder outputs, prompts, tokens) are fixed from here on
    windows = {c.name: floor.windows(c.audio) for c in clips}
    for c in clips:
        floor.plain(c.audio), floor.align(windows[c.name]), floor.run_probe(windows[c.name]), floor.run_vad(windows[c.name])
    same = {c.name: [s.text for w in windows[c.name] for s in w.segments] == floor.plain(c.audio) for c in clips}
    runs = {v: [] for v in VARIANTS}  # per repeat: (wall, cpu) summed over clips
    fns = {"plain": lambda c: floor.plain(c.audio), "align": lambda c: floor.align(windows[c.name]),
           "probe": lambda c: floor.run_probe(windows[c.name]), "vad": lambda c: floor.run_vad(windows[c.name])}
    for r in range(args.repeats):
        order = VARIANTS[r % 4:] + VARIANTS[:r % 4]
        total = {v: [0.0, 0.0] for v in VARIANTS}
        for c in clips:
            for v in order:
                _, wall, cpu = timed(lambda: fns[v](c))
                total[v][0] += wall
                total[v][1] += cpu
        for v in VARIANTS:
            runs[v].append(tuple(total[v]))
        print(f"repeat {r + 1}: " + ", ".join(f"{v} {total[v][0]:.3f} s" for v in VARIANTS), flush=True)

    def ratio(v: str, k: int) -> float:
        return statistics.median(runs[v][i][k] / runs["plain"][i][k] for i in range(args.repeats))

    n_windows = sum(len(w) for w in windows.values())
    dims = floor.probe.dims
    rate = gemm_rate(dims["frames"], dims["d_model"])
    kv_flops = n_windows * dims["layers"] * 2.0 * dims["frames"] * dims["d_model"] * 2 * dims["d_model"]
    kv_seconds = kv_flops / rate
    plain_cpu = statistics.median(x[1] for x in runs["plain"])
    n_tokens = sum(len(x.prompt) + len(x.tokens) for w in windows.values() for x in w)
    report = {
        "model": args.model, "repeats": args.repeats, "host": platform.node(), "cpus": os.cpu_count(),
        "ctranslate2": ctranslate2.__version__, "compute_type": floor.tr.compute_type,
        "clips": {c.name: round(c.seconds, 2) for c in clips}, "windows": n_windows, "tokens_fed": n_tokens,
        "guard_decode_equals_plain": same,
        "median_seconds": {v: {"wall": statistics.median(x[0] for x in runs[v]),
                               "cpu": statistics.median(x[1] for x in runs[v])} for v in VARIANTS},
        "share_of_plain": {v: {"wall": ratio(v, 0), "cpu": ratio(v, 1)} for v in VARIANTS if v != "plain"},
        "kv_floor": {"gflops": kv_flops / 1e9, "gemm_gflop_per_s_one_thread": rate / 1e9, "seconds": kv_seconds,
                     "share_of_plain_cpu": kv_seconds / plain_cpu},
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"probe-floor-{args.model}-cpu{args.suffix}"  # not Path.with_suffix: "tiny.en" has a dot
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1))
    lines = [f"# Teacher-forced re-run floor, {args.model} (CPU {floor.tr.compute_type}, {os.cpu_count()} CPUs, "
             f"{args.repeats} repeats, {n_windows} windows, {sum(c.seconds for c in clips):.0f} s of audio)", "",
             "| pass | median wall s | median CPU s | share of plain, wall | share of plain, CPU |", "|---|---:|---:|---:|---:|"]
    for v in VARIANTS:
        m = report["median_seconds"][v]
        sh = report["share_of_plain"].get(v, {"wall": 1.0, "cpu": 1.0})
        lines.append(f"| {v} | {m['wall']:.3f} | {m['cpu']:.3f} | {sh['wall']:.1%} | {sh['cpu']:.1%} |")
    lines.append(f"| kv (analytic: {kv_flops / 1e9:.1f} GFLOP at {rate / 1e9:.0f} GFLOP/s, one thread) | | "
                 f"{kv_seconds:.3f} | | {kv_seconds / plain_cpu:.1%} |")
    lines += ["", f"Guard decode equals plain per clip: {same}.",
              f"Reproduce: `python benchmarks/probe_floor.py --model {args.model} --repeats {args.repeats}`"]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

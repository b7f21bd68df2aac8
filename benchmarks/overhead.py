"""Overhead benchmark: the guard beside plain faster-whisper, on the same clips, in one run.

    python benchmarks/overhead.py --model tiny.en --model base [--repeats 3] [--device cpu]
    python benchmarks/overhead.py --whole-process --model tiny.en --model base [--repeats 5]

`--whole-process` compares fresh processes instead (`whisper-guard transcribe FILE` against a
plain faster-whisper script, start-up included): see `benchmarks/whole_process.py`. Writes
benchmarks/results/whole-<model>-cpu.{json,md}.

For every model, three variants run on the same clips (5 s speech prompts, ~30 s mixtures and a
few minutes of mixtures and speech concatenated), interleaved clip by clip in a rotating order
(a b c, b c a, c a b, ...) so that a noisy, shared machine slows all of them alike. Plain
faster-whisper and the guard each stay warm in a worker process of their own (`Workers`: two
models in one process make libgomp throttle both):

  (a) plain    `WhisperModel.transcribe` with the guard's own decoding settings (see `decode_kwargs`)
  (b) hst      the same plus faster-whisper's `hallucination_silence_threshold` (word timestamps on)
  (c) guard    `Guard.transcribe`: transcribe + probe + signature + score + policy
  (d) words    (with --words) the guard with word timestamps and word scores on; reported as
               (d)/(c), the paired cost of words over the guard without them

Reported: per clip and per length class the median wall time over repeats, the ratios (b)/(a)
and (c)/(a) (the median over repeats of the per-repeat ratio of summed times: each repeat is a
paired measurement), the guard's per-stage split, the real-time factor, and the peak RSS of
each variant measured alone in a fresh subprocess. Writes
benchmarks/results/perf-<model>-<device>.{json,md,png}.

The baseline uses `no_speech_threshold=None`: the guard never skips a window (it scores what
faster-whisper wrote there instead), so a baseline that skips would do less work than is being
guarded. Both use `language="en"` so that neither pays a language-detection pass.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guard.audio import decode_file  # noqa: E402
from guard.config import Settings  # noqa: E402
from guard.corpus import bench_dir  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCH = bench_dir()  # $WHISPER_GUARD_BENCH, else ../shared/bench
SR = 16000
VARIANTS = ("plain", "hst", "guard")
HST_SECONDS = 2.0  # hallucination_silence_threshold used for (b)
STAGES = ("transcribe", "probe", "signature", "score")


# ---------------------------------------------------------------- clips
@dataclass
class Clip:
    name: str
    cls: str  # "5s", "30s", "long"
    audio: np.ndarray
    sources: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR


def _manifest(bench: Path) -> list[dict]:
    return [json.loads(line) for line in (bench / "manifest.jsonl").read_text().splitlines() if line.strip()]


def pick_clips(bench: Path, n_short: int, n_30: int, long_seconds: list[float]) -> list[Clip]:
    """Deterministic picks by duration: English speech prompts near 5 s, mixtures near 30 s, and
    long clips made by concatenating mixtures and dialogue/read speech until the target length."""
    rows = sorted(_manifest(bench), key=lambda r: r["id"])
    english = [r for r in rows if r.get("lang") in ("en", None, "")]

    def load(r: dict) -> np.ndarray:
        return decode_file(bench / r["audio"], max_seconds=600)

    short = [r for r in english if r["kind"] == "speech" and 4.5 <= r["duration"] <= 6.0]
    thirty = [r for r in english if r["kind"] == "mixture" and 27.0 <= r["duration"] <= 33.0]
    pool = [r for r in english if (r["kind"] == "mixture" and 20 <= r["duration"] <= 70)
            or (r["kind"] == "speech" and r["duration"] >= 15)]
    clips = [Clip(r["id"], "5s", load(r), [r["id"]]) for r in _spread(short, n_short)]
    clips += [Clip(r["id"], "30s", load(r), [r["id"]]) for r in _spread(thirty, n_30)]
    order = _spread(pool, len(pool))
    start = 0
    for target in long_seconds:
        parts, total, used = [], 0.0, []
        while total < target:
            r = order[start % len(order)]
            start += 1
            parts.append(load(r))
            used.append(r["id"])
            total += len(parts[-1]) / SR
        audio = np.concatenate(parts)[: int(target * SR)]
        clips.append(Clip(f"concat-{int(target)}s", "long", audio.astype(np.float32), used))
    return clips


def _spread(rows: list[dict], n: int) -> list[dict]:
    """n rows spread evenly over a sorted list (deterministic, not the first n of one source)."""
    if n >= len(rows):
        return list(rows)
    idx = np.linspace(0, len(rows) - 1, n).round().astype(int)
    return [rows[i] for i in idx]


# ---------------------------------------------------------------- variants
def decode_kwargs(settings: Settings) -> dict:
    """faster-whisper arguments equal to `guard.asr.Transcriber.options()` (greedy ladder, same thresholds)."""
    return dict(language="en", beam_size=settings.beam_size, best_of=5, patience=1, length_penalty=1,
                repetition_penalty=1, no_repeat_ngram_size=0, temperature=list(settings.temperatures),
                compression_ratio_threshold=2.4, log_prob_threshold=-1.0, no_speech_threshold=None,
                condition_on_previous_text=settings.condition_on_previous_text, prompt_reset_on_temperature=0.5,
                suppress_blank=True, suppress_tokens=[-1], without_timestamps=False, max_initial_timestamp=1.0,
                vad_filter=False)


class Runner:
    """The three variants for one model, loaded once."""

    def __init__(self, model: str, device: str, with_guard: bool = True, with_plain: bool = True):
        from guard.models import resolve

        self.settings = Settings(model=model, device=device, max_concurrent=1)
        self.device = self.settings.resolved_device()
        self.compute_type = self.settings.resolved_compute_type(self.device)
        self.resolved = resolve(model, cache=self.settings.model_cache)
        self.kwargs = decode_kwargs(self.settings)
        self.whisper = self.guard = None
        if with_plain:
            from concurrent.futures import ThreadPoolExecutor

            from faster_whisper import WhisperModel

            # constructed on a thread, as the guard loads its own: CTranslate2 decodes a model loaded on
            # the main thread with fewer cores busy (benchmarks/whole_process.py, "threaded"), which
            # would flatter the guard; before round 6 both were loaded on the main thread
            with ThreadPoolExecutor(max_workers=1) as loader:
                self.whisper = loader.submit(WhisperModel, str(self.resolved.path), device=self.device,
                                             compute_type=self.compute_type).result()
        if with_guard:
            from guard.pipeline import Guard

            self.guard = Guard(self.settings, require_calibration=False)  # base ships no calibration yet
            self.bundle = self.guard.bundle(None)
            self.neutral_calibration = bool(self.bundle.calibration.meta.get("neutral"))
            self._wrap_vad()
            self._wrap_words()
        self.vad_seconds = 0.0
        self.words_seconds = 0.0

    def _wrap_vad(self) -> None:
        """Time Silero VAD inside the signature stage (it is counted there by the pipeline)."""
        inner = self.guard.vad.evidence

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.vad_seconds += time.perf_counter() - t0

        self.guard.vad.evidence = timed

    def _wrap_words(self) -> None:
        """Time the word stage (alignment, word features, word scores) where it runs (thread CPU time)."""
        inner = self.guard._words

        def timed(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.words_seconds += time.thread_time() - t0

        self.guard._words = timed

    def meta(self) -> dict:
        """What the report says about this runner's models (the guard's half only where it has one)."""
        out = {"device": self.device, "compute_type": self.compute_type, "kwargs": self.kwargs}
        if self.guard is not None:
            probe = self.bundle.probe
            out.update(neutral_calibration=self.neutral_calibration,
                       probe=probe.describe() if hasattr(probe, "describe") else {"providers": probe.providers})
        return out

    def run(self, variant: str, audio: np.ndarray) -> dict:
        if variant in ("guard", "words"):
            from guard.results import RequestOptions

            self.vad_seconds = self.words_seconds = 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            result = self.guard.transcribe(audio, RequestOptions(language="en", word_timestamps=variant == "words"))
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            return {"wall": wall, "cpu": cpu, "stages": dict(result.timings), "vad": self.vad_seconds,
                    "words_cpu": self.words_seconds,
                    "text": result.text if result.segments else "", "scores": [s.score for s in result.segments],
                    "segments": len(result.segments), "windows": len({s.segment.window for s in result.segments})}
        extra = {"word_timestamps": True, "hallucination_silence_threshold": HST_SECONDS} if variant == "hst" else {}
        t0, c0 = time.perf_counter(), time.process_time()
        segments, _info = self.whisper.transcribe(audio, **self.kwargs, **extra)
        segments = list(segments)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"wall": wall, "cpu": cpu, "text": "".join(s.text for s in segments).strip(), "segments": len(segments)}


# ---------------------------------------------------------------- peak RSS (fresh process per variant)
def _memory_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across the
    fork + exec that started this child, so it would report the parent's peak."""
    status = Path("/proc/self/status").read_text()
    get = lambda key: int(status.split(key + ":")[1].split()[0]) / 1024  # noqa: E731
    return get("VmRSS"), get("VmHWM")


def rss_child(model: str, device: str, variant: str, seconds: float) -> dict:
    _, before = _memory_mb()
    runner = Runner(model, device, with_guard=variant == "guard", with_plain=variant != "guard")
    _, loaded = _memory_mb()
    clip = pick_clips(BENCH, 0, 0, [seconds])[0]
    runner.run(variant, clip.audio)
    rss, peak = _memory_mb()
    return {"variant": variant, "after_import_mb": before, "after_load_mb": loaded, "peak_mb": peak,
            "end_mb": rss, "audio_seconds": clip.seconds}


def measure_rss(model: str, device: str, seconds: float) -> dict:
    out = {}
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--rss-child", variant, "--model", model, "--device", device,
                               "--rss-seconds", str(seconds)], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"RSS child for {variant} failed:\n{proc.stderr[-2000:]}")
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- one process per model
ROLE = {"plain": "plain", "hst": "plain", "guard": "guard", "words": "guard"}


def _serve(conn, model: str, device: str, role: str, blas_threads: int) -> None:
    """A worker process: one Runner half (plain faster-whisper or the guard), timing calls on request."""
    try:
        np.seterr(all="ignore")
        if blas_threads:
            from threadpoolctl import threadpool_limits

            threadpool_limits(blas_threads, user_api="blas")
        runner = Runner(model, device, with_guard=role == "guard", with_plain=role == "plain")
        conn.send(("ready", runner.meta()))
        clips: dict[str, np.ndarray] = {}
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                return
            if msg[0] == "clip":
                clips[msg[1]] = msg[2]
                continue
            gc.collect()
            conn.send(("result", runner.run(msg[1], clips[msg[2]])))
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises)
        import traceback

        conn.send(("error", traceback.format_exc()))


class Workers:
    """Plain faster-whisper and the guard, each warm in its own process, driven from this one.

    Not one process for both: CTranslate2 runs on libgomp, and libgomp stops spin-waiting at its
    barriers (it "throttles" to a short spin) once the process holds more OpenMP threads than
    CPUs. Two loaded models that have both decoded hold two teams of threads (4 on a 2-core host),
    and from then on every decode in the process, plain's and the guard's, runs with fewer cores
    busy: base over 150 s, plain alone 8.4-9.3 s, the same call after the guard's model had
    decoded once 13.7-14.2 s (round 9; `--one-process` keeps the old set-up to show it). A user's
    process holds one model, so each variant here does too. Timings (wall, process CPU) are taken
    inside the worker, around the call, as before."""

    def __init__(self, model: str, device: str, variants: tuple[str, ...], clips: list[Clip], blas_threads: int = 0):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conns, self.procs, self.meta = {}, {}, {}
        for role in dict.fromkeys(ROLE[v] for v in variants):  # loaded one after the other
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, model, device, role, blas_threads), daemon=True)
            proc.start()
            self.conns[role], self.procs[role] = parent, proc
            self.meta[role] = self._reply(role, "ready")
            for clip in clips:
                parent.send(("clip", clip.name, clip.audio))

    def _reply(self, role: str, kind: str):
        got, value = self.conns[role].recv()
        if got == "error":
            raise RuntimeError(f"the {role} worker failed:\n{value}")
        assert got == kind, got
        return value

    def run(self, variant: str, clip: Clip) -> dict:
        role = ROLE[variant]
        self.conns[role].send(("run", variant, clip.name))
        return self._reply(role, "result")

    def close(self) -> None:
        for role, conn in self.conns.items():
            conn.send(("stop",))
            self.procs[role].join(timeout=30)


class OneProcess:
    """Both halves in this process (the set-up before round 9; see `Workers` for why it misleads)."""

    def __init__(self, model: str, device: str):
        self.runner = Runner(model, device)
        meta = self.runner.meta()
        self.meta = {"plain": meta, "guard": meta}

    def run(self, variant: str, clip: Clip) -> dict:
        gc.collect()
        return self.runner.run(variant, clip.audio)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- the run
def bench_model(model: str, device: str, clips: list[Clip], repeats: int, rss_seconds: float | None,
                words: bool = False, one_process: bool = False, blas_threads: int = 0) -> dict:
    variants = VARIANTS + (("words",) if words else ())
    runner = OneProcess(model, device) if one_process else Workers(model, device, variants, clips, blas_threads)
    for v in variants:  # first calls pay lazy initialisation
        runner.run(v, clips[0])
    runs: dict[str, dict[str, list[dict]]] = {c.name: {v: [] for v in variants} for c in clips}
    k = 0
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    for rep in range(repeats):
        for clip in clips:
            order = variants[k % len(variants):] + variants[:k % len(variants)]
            k += 1
            for v in order:
                runs[clip.name][v].append(runner.run(v, clip))
            print(f"[{model}] rep {rep + 1}/{repeats} {clip.name} ({clip.seconds:.0f} s): " + "  ".join(
                f"{v} {runs[clip.name][v][-1]['wall']:.2f}s" for v in variants), file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t_start
    runner.close()
    report = summarise(model, runner.meta, clips, runs, repeats, variants)
    report["run"] = {"elapsed_seconds": elapsed, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                     "processes": "one (both models)" if one_process else "one per model (plain, guard)"}
    if rss_seconds:
        del runner
        gc.collect()
        report["peak_rss_mb"] = measure_rss(model, device, rss_seconds)
    return report


def summarise(model: str, meta: dict[str, dict], clips: list[Clip], runs: dict, repeats: int,
              variants: tuple[str, ...]) -> dict:
    med = lambda xs: float(statistics.median(xs))  # noqa: E731
    others = [v for v in variants if v != "plain"]
    per_clip = []
    for clip in clips:
        r = runs[clip.name]
        row = {"clip": clip.name, "class": clip.cls, "audio_seconds": clip.seconds, "sources": clip.sources}
        for v in variants:
            row[f"{v}_seconds"] = med([x["wall"] for x in r[v]])
        for v in others:
            row[f"{v}_ratio"] = med([x["wall"] / p["wall"] for x, p in zip(r[v], r["plain"])])
            row[f"{v}_cpu_ratio"] = med([x["cpu"] / p["cpu"] for x, p in zip(r[v], r["plain"])])
        if "words" in variants:
            row["words_over_guard_ratio"] = med([x["wall"] / g["wall"] for x, g in zip(r["words"], r["guard"])])
        row["guard_stages"] = {s: med([x["stages"][s] for x in r["guard"]]) for s in STAGES}
        row["guard_vad_seconds"] = med([x["vad"] for x in r["guard"]])
        row["windows"] = r["guard"][0]["windows"]
        row["same_text_as_plain"] = r["guard"][0]["text"] == r["plain"][0]["text"]
        per_clip.append(row)

    def group(names: list[str]) -> dict:
        sums = {v: [sum(runs[n][v][i]["wall"] for n in names) for i in range(repeats)] for v in variants}
        audio = sum(c.seconds for c in clips if c.name in names)
        stages = {s: med([sum(runs[n]["guard"][i]["stages"][s] for n in names) for i in range(repeats)])
                  for s in STAGES}
        stages["signature_vad"] = med([sum(runs[n]["guard"][i]["vad"] for n in names) for i in range(repeats)])
        plain = med(sums["plain"])
        out = {"clips": len(names), "audio_seconds": audio, **{f"{v}_seconds": med(sums[v]) for v in variants}}
        cpu = {v: [sum(runs[n][v][i]["cpu"] for n in names) for i in range(repeats)] for v in variants}
        for v in others:
            ratios = [x / p for x, p in zip(sums[v], sums["plain"])]
            out[f"{v}_ratio"] = med(ratios)
            out[f"{v}_ratio_per_repeat"] = ratios
            out[f"{v}_cpu_ratio"] = med([x / p for x, p in zip(cpu[v], cpu["plain"])])
        out.update({f"{v}_cpu_seconds": med(cpu[v]) for v in variants})
        out.update({f"{v}_rtf": med(sums[v]) / audio for v in variants})
        if "words" in variants:
            ratios = [w / g for w, g in zip(sums["words"], sums["guard"])]
            out["words_over_guard_ratio"] = med(ratios)
            out["words_over_guard_ratio_per_repeat"] = ratios
            out["words_over_guard_cpu_ratio"] = med([w / g for w, g in zip(cpu["words"], cpu["guard"])])
            out["words_stage_cpu_share_of_guard_cpu"] = med([
                sum(runs[n]["words"][i]["words_cpu"] for n in names) / cpu["guard"][i] for i in range(repeats)])
        out["guard_stages_seconds"] = stages
        out["guard_stage_share_of_plain"] = {s: t / plain for s, t in stages.items()}
        return out

    classes = {cls: group([c.name for c in clips if c.cls == cls]) for cls in ("5s", "30s", "long")
               if any(c.cls == cls for c in clips)}
    classes["all"] = group([c.name for c in clips])
    import ctranslate2
    import faster_whisper
    import onnxruntime as ort

    g = meta["guard"]
    return {
        "model": model, "device": g["device"], "resolved_device": g["device"],
        "compute_type": g["compute_type"], "repeats": repeats, "variants": list(variants),
        "hst_seconds": HST_SECONDS, "baseline_kwargs": meta["plain"]["kwargs"],
        "neutral_calibration": g["neutral_calibration"],  # features are computed either way
        "probe": g["probe"],
        "ct2": {"device": g["device"], "compute_type": g["compute_type"], "cpu_threads": "default"},
        "blas": _blas_info(),
        "versions": {
            "ctranslate2": ctranslate2.__version__, "faster_whisper": faster_whisper.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "classes": classes, "clips": per_clip,
    }


def _blas_info() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"threadpoolctl": "not installed", "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}]
    return [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()
            if i.get("user_api") == "blas"]


# ---------------------------------------------------------------- output
def write(report: dict, out_dir: Path, findings: list[str], suffix: str = "") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"perf-{report['model']}-{report['resolved_device']}{suffix}"
    report["findings"] = findings
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(report))
    try:
        plot(report, Path(f"{stem}.png"))
    except ImportError:
        pass
    return stem


LABELS = {"plain": "(a) plain", "hst": "(b) hst", "guard": "(c) guard", "words": "(d) words"}


def markdown(r: dict) -> str:
    variants = r["variants"]
    others = [v for v in variants if v != "plain"]
    blas = ", ".join(f"{b['internal_api']} {b['num_threads']} threads" for b in r["blas"] if "internal_api" in b)
    lines = [f"# Overhead: {r['model']} on {r['resolved_device']} ({r['compute_type']})", "",
             f"{r['repeats']} repeats, variants interleaved per clip in rotating order; medians. Ratios are medians "
             "of per-repeat paired ratios. (b) = faster-whisper with `hallucination_silence_threshold="
             f"{r['hst_seconds']}` and word timestamps. Probe on {r['probe']['providers'][0]}; numpy BLAS: "
             f"{blas or 'unknown'}. Processes: {r.get('run', {}).get('processes', 'one (both models)')}.", "",
             "| clips | audio s | " + " | ".join(f"{LABELS[v]} s" for v in variants) + " | "
             + " | ".join(f"{LABELS[v][:4].strip()}/(a)" for v in others) + " | RTF (a) | RTF (c) |",
             "|---|---:|" + "---:|" * (len(variants) + len(others) + 2)]
    for cls, g in r["classes"].items():
        lines.append(f"| {cls} ({g['clips']}) | {g['audio_seconds']:.0f} | "
                     + " | ".join(f"{g[f'{v}_seconds']:.2f}" for v in variants) + " | "
                     + " | ".join(f"**{g[f'{v}_ratio']:.3f}**" if v == "guard" else f"{g[f'{v}_ratio']:.3f}"
                                  for v in others)
                     + f" | {g['plain_rtf']:.3f} | {g['guard_rtf']:.3f} |")
    if "words" in variants:
        lines += ["", "(d) = the guard with word timestamps and word scores. Cost of words over the guard "
                  "without them, paired per repeat; the word stage's own CPU time (alignment, word features, "
                  "word scores; thread CPU time where it runs) as a share of the guard's process CPU time:", "",
                  "| clips | (d)/(c) wall | (d)/(c) cpu | word stage / guard cpu | wall ratio per repeat |",
                  "|---|---:|---:|---:|---|"]
        for cls, g in r["classes"].items():
            lines.append(f"| {cls} | **{g['words_over_guard_ratio']:.3f}** | {g['words_over_guard_cpu_ratio']:.3f} | "
                         f"{g.get('words_stage_cpu_share_of_guard_cpu', float('nan')):.3f} | "
                         + ", ".join(f"{x:.3f}" for x in g["words_over_guard_ratio_per_repeat"]) + " |")
    lines += ["", "Process CPU time (user + system, all threads of the benchmark process) over the same calls: "
              "less sensitive to other tenants than wall time; a variant that overlaps work on threads "
              "saves wall time, not CPU time.", "",
              "| clips | " + " | ".join(f"{LABELS[v]} cpu s" for v in variants) + " | "
              + " | ".join(f"{LABELS[v][:4].strip()}/(a) cpu" for v in others) + " |",
              "|---|" + "---:|" * (len(variants) + len(others))]
    for cls, g in r["classes"].items():
        lines.append(f"| {cls} | " + " | ".join(f"{g[f'{v}_cpu_seconds']:.2f}" for v in variants) + " | "
                     + " | ".join(f"{g[f'{v}_cpu_ratio']:.3f}" for v in others) + " |")
    lines += ["", "Guard (c) stages (all clips, seconds; share of plain faster-whisper's time). `signature_vad` is "
              "the Silero VAD part of `signature`:", "", "| stage | seconds | share of (a) |", "|---|---:|---:|"]
    g = r["classes"]["all"]
    for s, t in g["guard_stages_seconds"].items():
        lines.append(f"| {s} | {t:.3f} | {g['guard_stage_share_of_plain'][s]:.3f} |")
    if "peak_rss_mb" in r:
        lines += ["", "Peak RSS, each variant alone in a fresh process "
                  f"({next(iter(r['peak_rss_mb'].values()))['audio_seconds']:.0f} s clip):", "",
                  "| variant | after load MB | peak MB |", "|---|---:|---:|"]
        for v, m in r["peak_rss_mb"].items():
            lines.append(f"| {v} | {m['after_load_mb']:.0f} | {m['peak_mb']:.0f} |")
    lines += ["", "Per clip (median seconds):", "",
              "| clip | s | windows | " + " | ".join(LABELS[v] for v in variants) + " | (c)/(a) | same text |",
              "|---|---:|---:|" + "---:|" * (len(variants) + 1) + "---|"]
    for c in r["clips"]:
        lines.append(f"| {c['clip']} | {c['audio_seconds']:.1f} | {c['windows']} | "
                     + " | ".join(f"{c[f'{v}_seconds']:.2f}" for v in variants)
                     + f" | {c['guard_ratio']:.3f} | {'yes' if c['same_text_as_plain'] else 'no'} |")
    if r.get("findings"):
        lines += ["", "Findings:", ""] + [f"- {f}" for f in r["findings"]]
    lines += ["", f"Machine: {r['machine']['cpus']} CPUs, load average {r['run']['loadavg_before'][0]:.1f} before / "
              f"{r['run']['loadavg_after'][0]:.1f} after (a shared host); versions {r['versions']}.", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(r["classes"])
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(classes))
    w = 0.27
    ax.bar(x - w, [r["classes"][c]["plain_rtf"] for c in classes], w, label="(a) faster-whisper")
    ax.bar(x, [r["classes"][c]["hst_rtf"] for c in classes], w, label="(b) + hallucination_silence_threshold")
    bottom = np.zeros(len(classes))
    for s in STAGES:
        vals = np.array([r["classes"][c]["guard_stages_seconds"][s] / r["classes"][c]["audio_seconds"]
                         for c in classes])
        ax.bar(x + w, vals, w, bottom=bottom, label=f"(c) guard: {s}")
        bottom += vals
    ax.set_xticks(x, classes)
    ax.set_ylabel("real-time factor (wall s / audio s)")
    ax.set_title(f"{r['model']} on {r['resolved_device']} ({r['compute_type']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", help="tiny.en, base, ... (repeatable; default tiny.en and base)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--short", type=int, default=3, help="5 s speech clips")
    p.add_argument("--thirty", type=int, default=2, help="~30 s mixture clips")
    p.add_argument("--long", type=float, action="append", help="seconds of each concatenated clip (default 150)")
    p.add_argument("--rss-seconds", type=float, default=150.0, help="clip length for the peak RSS runs (0 = skip)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--findings", type=Path, help="JSON {model: [finding, ...]} to embed in the report")
    p.add_argument("--blas-threads", type=int, default=0,
                   help="limit numpy's BLAS threads for every variant (0 = leave as the product does)")
    p.add_argument("--suffix", default="", help="appended to the output file names")
    p.add_argument("--whole-process", action="store_true",
                   help="fresh processes: whisper-guard transcribe FILE vs a plain faster-whisper script")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "whisper-guard-bench",
                   help="with --whole-process: where the input WAV files are written")
    p.add_argument("--inputs", default="long,speech,clip1s", help="with --whole-process: which inputs")
    p.add_argument("--words", action="store_true", help="add (d): the guard with word timestamps on")
    p.add_argument("--one-process", action="store_true",
                   help="both models in this process, as before round 9 (libgomp then throttles both: see Workers)")
    p.add_argument("--rss-child", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    models = a.model or ["tiny.en", "base"]
    if a.whole_process:
        return main_whole_process(a, models)
    if a.rss_child:
        print(json.dumps(rss_child(models[0], a.device, a.rss_child, a.rss_seconds)))
        return 0
    np.seterr(all="ignore")
    if a.blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(a.blas_threads, user_api="blas")
    clips = pick_clips(BENCH, a.short, a.thirty, a.long or [150.0])
    print("clips: " + ", ".join(f"{c.name} {c.seconds:.1f}s" for c in clips), file=sys.stderr)
    findings = json.loads(a.findings.read_text()) if a.findings else {}
    for model in models:
        report = bench_model(model, a.device, clips, a.repeats, a.rss_seconds or None, a.words,
                             one_process=a.one_process, blas_threads=a.blas_threads)
        stem = write(report, a.out, findings.get(model, []), a.suffix)
        print(markdown(report))
        print(f"wrote {stem}.json/.md/.png", file=sys.stderr)
    return 0


def main_whole_process(a: argparse.Namespace, models: list[str]) -> int:
    from benchmarks import whole_process as wp
    from guard.models import resolve

    inputs = wp.build_inputs(BENCH, a.work)
    wanted = a.inputs.split(",")
    inputs = {k: v for k, v in inputs.items() if k in wanted}
    print("inputs: " + ", ".join(f"{k} {v['seconds']:.1f}s ({v['origin']})" for k, v in inputs.items()),
          file=sys.stderr)
    findings = json.loads(a.findings.read_text()) if a.findings else {}
    settings = Settings()
    for model in models:
        model_dir = str(resolve(model, cache=settings.model_cache).path)
        wp.run_process(wp.commands(model, model_dir, inputs[wanted[-1]]["path"])["guard"])  # warm the caches
        report = wp.bench(model, model_dir, inputs, a.repeats, log=lambda m: print(m, file=sys.stderr, flush=True))
        import ctranslate2
        import faster_whisper
        import onnxruntime as ort

        report["versions"] = {"ctranslate2": ctranslate2.__version__, "faster_whisper": faster_whisper.__version__,
                              "onnxruntime": ort.__version__, "python": platform.python_version()}
        report["machine"] = {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()}
        report["findings"] = findings.get(model, [])
        a.out.mkdir(parents=True, exist_ok=True)
        stem = a.out / f"whole-{model}-cpu{a.suffix}"
        Path(f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        Path(f"{stem}.md").write_text(wp.markdown(report))
        print(wp.markdown(report))
        print(f"wrote {stem}.json/.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

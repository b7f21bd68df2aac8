"""Load benchmark: the gRPC (and HTTP) server under N concurrent clients, beside the same calls in-process.

    python benchmarks/load.py --model tiny.en [--clients 1 2 4 8 16] [--requests-per-client 2]
    python benchmarks/load.py --transports http --clients 1 --rounds 1 --paired 8 --suffix -http

Loopback only and bounded: the server is started as a subprocess on 127.0.0.1 (an ephemeral port
chosen here), every level sends a fixed number of requests and stops at a time cap. For each N:

  grpc        N client threads send unary Transcribe calls (30 s clips as raw PCM16) to the server
  http        (with --transports http) N client threads POST the same clips as WAV files to the
              OpenAI-compatible /v1/audio/transcriptions (response_format=verbose_json) of the same
              server process (`--http-address`), with httpx; paired per call against the reply's
              `inference_seconds` + `queued_seconds` (the pipeline's own wall time in that call, i.e.
              the call's in-process cost), so everything HTTP adds (client encoding, loopback,
              uvicorn, multipart parsing, admission, rendering) is the overhead
  in-process  N threads make the same calls on a Guard in this process, behind the server's own
              admission control (`guard.serving.Admission`, same limits), decoding the same PCM

`--paired K` adds a sequential A/B at N = 1: K passes over the clips, each clip sent in-process and
over every transport back to back (order alternating), so each pair sees the same host load; the
ratio per pair (transport latency / in-process latency) is reported as median and 10-90 % range.

Both modes run at each level in turn (grpc, in-process, then the other order at the next level),
and the whole sweep repeats `--rounds` times, so drift on a shared host hits both; latencies are
pooled over rounds, throughput is the median of the rounds. Reported per mode and N: throughput (audio seconds per wall
second), latency p50/p95/p99, rejections (RESOURCE_EXHAUSTED) and other errors; the serving
overhead at N = 1, paired per call (client latency over the server's own processing + queue time
from the response summary: robust to drift) and unpaired (grpc / in-process p50) and the server's resident memory (VmRSS, and VmHWM:
the peak since it started). Writes benchmarks/results/load-<model>-<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from overhead import BENCH, pick_clips  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SR = 16000


@dataclass
class Level:
    mode: str
    clients: int
    requests: int
    wall: float = 0.0
    audio_done: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server: list[float] = field(default_factory=list)  # gRPC: the server's processing + queued seconds, per call
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    capped: bool = False

    def summary(self) -> dict:
        lat = np.array(self.latencies) if self.latencies else np.array([np.nan])
        paired = {}
        if self.server:
            srv = np.array(self.server)
            paired = {"paired_overhead_ratio_p50": float(np.median(lat / srv)),
                      "paired_overhead_ms_p50": float(np.median(lat - srv) * 1000),
                      "paired_overhead_ms_p95": float(np.percentile(lat - srv, 95) * 1000)}
        return {**paired,"mode": self.mode, "clients": self.clients, "requests": self.requests, "ok": len(self.latencies),
                "rejected": self.rejected, "errors": len(self.errors), "error_samples": self.errors[:3],
                "capped": self.capped, "wall_seconds": self.wall, "audio_seconds": self.audio_done,
                "throughput_audio_s_per_s": self.audio_done / self.wall if self.wall else 0.0,
                "latency_p50": float(np.percentile(lat, 50)), "latency_p95": float(np.percentile(lat, 95)),
                "latency_p99": float(np.percentile(lat, 99)), "latency_mean": float(np.mean(lat))}


def pcm16(audio: np.ndarray) -> bytes:
    return np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def drive(mode: str, clients: int, requests: int, cap: float, call, clips: list[tuple[bytes, float]]) -> Level:
    """N threads share a fixed list of `requests` calls (round-robin clips); stop starting new
    calls after `cap` seconds. `call(pcm)` returns ("ok" | "rejected", the server's own seconds or None)
    or raises."""
    level = Level(mode, clients, requests)
    lock = threading.Lock()
    todo = list(range(requests))
    start = time.perf_counter()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                if time.perf_counter() - start > cap:
                    level.capped = True
                    return
                i = todo.pop(0)
            pcm, seconds = clips[i % len(clips)]
            t0 = time.perf_counter()
            try:
                outcome, server_seconds = call(pcm)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    level.errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                continue
            dt = time.perf_counter() - t0
            with lock:
                if outcome == "rejected":
                    level.rejected += 1
                else:
                    level.latencies.append(dt)
                    level.audio_done += seconds
                    if server_seconds is not None:
                        level.server.append(server_seconds)

    threads = [threading.Thread(target=worker, name=f"load-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.wall = time.perf_counter() - start
    return level


# ---------------------------------------------------------------- modes
class InProcess:
    """The server's work without the server: admission, PCM decode, Guard.transcribe."""

    def __init__(self, settings):
        from guard.pipeline import Guard
        from guard.serving.admission import Admission

        self.settings = settings
        self.guard = Guard(settings)
        self.admission = Admission(settings.max_concurrent, settings.max_queued)

    def __call__(self, pcm: bytes) -> str:
        from guard import audio
        from guard.results import RequestOptions

        ticket = self.admission.admit()
        if ticket is None:
            return "rejected", None
        try:
            with ticket.slot(lambda: False):
                samples = audio.from_pcm16(pcm, SR, max_seconds=self.settings.max_audio_seconds)
                self.guard.transcribe(samples, RequestOptions(language="en"))
        finally:
            ticket.release()
        return "ok", None


class Server:
    """`python -m guard.server` on loopback, as a subprocess we can measure and stop."""

    def __init__(self, model: str, device: str, max_concurrent: int, max_queued: int, log_path: Path,
                 extra_env: dict[str, str] | None = None, http: bool = False):
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self.http_url = f"http://127.0.0.1:{_free_port()}" if http else None
        env = {**os.environ, "WHISPER_GUARD_LOG_LEVEL": "WARNING", **(extra_env or {})}
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guard.server", "--address", self.address, "--metrics-address", "",
             "--model", model, "--device", device, "--max-concurrent", str(max_concurrent),
             "--max-queued", str(max_queued),
             *(["--http-address", self.http_url.removeprefix("http://")] if http else [])],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        from guard.client import GuardClient

        self.client = GuardClient(self.address, timeout=600)
        if not self.client.wait_ready(timeout=180):
            self.stop()
            raise RuntimeError(f"the server did not become SERVING; see {log_path}")

    def __call__(self, pcm: bytes) -> str:
        import grpc

        try:
            reply = self.client.transcribe(pcm, sample_rate=SR, language="en")
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return "rejected", None
            raise
        return "ok", reply.summary.processing_seconds + reply.summary.queued_seconds

    def memory(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        get = lambda key: int(status.split(key + ":")[1].split()[0]) / 1024  # noqa: E731
        return {"rss_mb": get("VmRSS"), "peak_rss_mb": get("VmHWM")}

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class HttpMode:
    """POST /v1/audio/transcriptions (WAV, verbose_json) to the server's HTTP transport."""

    def __init__(self, url: str):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=600)
        self._wav: dict[int, bytes] = {}

    def prepare(self, pcm: bytes) -> None:
        """WAV-wrap a clip once, before any timing (a client sends a file it already has)."""
        import io
        import wave

        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SR)
            w.writeframes(pcm)
        self._wav[id(pcm)] = out.getvalue()

    def __call__(self, pcm: bytes) -> str:
        r = self.client.post("/v1/audio/transcriptions", files={"file": ("clip.wav", self._wav[id(pcm)], "audio/wav")},
                             data={"model": "whisper-1", "language": "en", "response_format": "verbose_json"})
        if r.status_code == 429:
            return "rejected", None
        r.raise_for_status()
        g = r.json()["guard"]  # the time inside the pipeline (+ queue): what the call costs in-process
        return "ok", g["inference_seconds"] + g["queued_seconds"]

    def close(self) -> None:
        self.client.close()


def paired(modes: dict, payload: list[tuple[bytes, float]], passes: int) -> dict:
    """Sequential A/B at N = 1: every clip in-process and over each transport back to back."""
    ratios: dict[str, list[float]] = {name: [] for name in modes if name != "in-process"}
    k = 0
    for _ in range(passes):
        for pcm, _seconds in payload:
            names = list(modes) if k % 2 == 0 else list(modes)[::-1]
            took = {}
            for name in names:
                t0 = time.perf_counter()
                outcome, _ = modes[name](pcm)
                took[name] = time.perf_counter() - t0
                assert outcome == "ok", (name, outcome)
            for name in ratios:
                ratios[name].append(took[name] / took["in-process"])
            k += 1
    out = {}
    for name, rs in ratios.items():
        a = np.array(rs)
        out[name] = {"pairs": len(rs), "ratio_median": float(np.median(a)), "ratio_p10": float(np.percentile(a, 10)),
                     "ratio_p90": float(np.percentile(a, 90)), "ratio_mean": float(np.mean(a)),
                     "ratios": [float(x) for x in a]}
        print(f"[paired] {name}/in-process over {len(rs)} pairs: median {out[name]['ratio_median']:.4f} "
              f"(p10 {out[name]['ratio_p10']:.4f}, p90 {out[name]['ratio_p90']:.4f})", file=sys.stderr, flush=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the run
def merge(runs: list[Level]) -> dict:
    """Rounds of one (mode, N): pooled latencies and counts; throughput as the median over rounds."""
    pooled = Level(runs[0].mode, runs[0].clients, sum(r.requests for r in runs))
    for r in runs:
        pooled.latencies += r.latencies
        pooled.server += r.server
        pooled.rejected += r.rejected
        pooled.errors += r.errors
        pooled.capped |= r.capped
        pooled.wall += r.wall
        pooled.audio_done += r.audio_done
    out = pooled.summary()
    per_round = [r.audio_done / r.wall for r in runs if r.wall]
    out["throughput_audio_s_per_s"] = float(statistics.median(per_round)) if per_round else 0.0
    out["throughput_per_round"] = per_round
    out["rounds"] = len(runs)
    return out


def run(model: str, device: str, levels: list[int], per_client: int, min_requests: int, cap: float,
        max_concurrent: int, max_queued: int, n_clips: int, rounds: int, server_env: dict[str, str],
        transports: tuple[str, ...] = ("grpc",), passes: int = 0) -> dict:
    from guard.config import Settings

    clips = pick_clips(BENCH, 0, n_clips, [])
    payload = [(pcm16(c.audio), c.seconds) for c in clips]
    settings = Settings(model=model, device=device, max_concurrent=max_concurrent, max_queued=max_queued,
                        metrics_address="")
    server = Server(model, device, max_concurrent, max_queued,
                    Path(tempfile.gettempdir()) / f"whisper-guard-load-{model}.log", server_env,
                    http="http" in transports)
    http = HttpMode(server.http_url) if "http" in transports else None
    pairs = {}
    try:
        inproc = InProcess(settings)
        modes = {"grpc": server, "http": http}
        modes = {name: modes[name] for name in transports}
        if http is not None:
            for pcm, _ in payload:
                http.prepare(pcm)
        for mode in (*modes.values(), inproc):  # warm all: first calls pay lazy initialisation
            for pcm, _ in payload:
                mode(pcm)
        if passes:
            pairs = paired({**modes, "in-process": inproc}, payload, passes)
        runs: dict[tuple[str, int], list[Level]] = {}
        k = 0
        for rnd in range(rounds):
            for n in levels:
                requests = max(min_requests, per_client * n)
                order = [*modes.items(), ("in-process", inproc)]
                for name, call in (order if k % 2 == 0 else order[::-1]):
                    level = drive(name, n, requests, cap, call, payload)
                    runs.setdefault((name, n), []).append(level)
                    s = level.summary()
                    print(f"[{name:10s}] round {rnd + 1} N={n:2d} {s['ok']:3d} ok {s['rejected']:2d} rejected "
                          f"{s['errors']} errors  {s['throughput_audio_s_per_s']:6.2f} audio s/s  "
                          f"p50 {s['latency_p50']:.2f}s p95 {s['latency_p95']:.2f}s", file=sys.stderr, flush=True)
                k += 1
        results = [merge(levels_run) for levels_run in runs.values()]
        memory = server.memory()
    finally:
        if http is not None:
            http.close()
        server.stop()
    out = report(model, settings, levels, results, memory, clips, cap, transports)
    out["server_env"] = server_env
    out["paired_sequential_n1"] = pairs
    return out


def report(model: str, settings, levels: list[int], results: list[dict], memory: dict, clips, cap: float,
           transports: tuple[str, ...] = ("grpc",)) -> dict:
    by = {(r["mode"], r["clients"]): r for r in results}
    cores = os.cpu_count() or 1
    best_inproc = max(r["throughput_audio_s_per_s"] for r in results if r["mode"] == "in-process")
    limit = settings.max_concurrent + settings.max_queued
    targets = {}
    overheads = {}
    for t in transports:
        at_cores = by.get((t, cores)) or by[(t, min(levels, key=lambda n: abs(n - cores)))]
        overheads[t] = {n: by[(t, n)]["latency_p50"] / by[("in-process", n)]["latency_p50"] for n in levels}
        targets.update({
            f"{t}_overhead_vs_inprocess_n1": overheads[t][levels[0]],
            f"{t}_overhead_paired_n1": by[(t, levels[0])].get("paired_overhead_ratio_p50"),
            f"{t}_overhead_paired_ms_n1": by[(t, levels[0])].get("paired_overhead_ms_p50"),
            f"{t}_throughput_at_cores_vs_best_inprocess": at_cores["throughput_audio_s_per_s"] / best_inproc,
        })
    return {
        "model": model, "device": settings.resolved_device(), "max_concurrent": settings.max_concurrent,
        "max_queued": settings.max_queued, "admission_limit": limit, "cores": cores, "time_cap_seconds": cap,
        "clips": [{"clip": c.name, "seconds": c.seconds} for c in clips], "levels": results,
        "transports": list(transports),
        "serving_overhead_p50": overheads.get("grpc", overheads[transports[0]]),
        "serving_overhead_p50_by_transport": overheads,
        "targets": {
            **targets,
            "rejections_below_limit": sum(r["rejected"] for r in results if r["clients"] <= limit),
            "server_peak_rss_mb": memory["peak_rss_mb"],
        },
        "server_memory": memory,
        "machine": {"cpus": cores, "platform": platform.platform(), "loadavg_end": os.getloadavg()},
    }


def markdown(r: dict) -> str:
    t = r["targets"]
    lines = [f"# Load: {r['model']} on {r['device']}, max_concurrent={r['max_concurrent']}, "
             f"max_queued={r['max_queued']} ({r['cores']} cores)", "",
             "Unary Transcribe of ~30 s clips (gRPC: raw PCM16; HTTP: the same clips as WAV files), loopback vs the "
             "same calls in-process behind the same admission control.", "",
             "| mode | N | ok | rejected | errors | audio s / wall s | p50 s | p95 s | p99 s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in sorted(r["levels"], key=lambda x: (x["clients"], x["mode"])):
        lines.append(f"| {x['mode']} | {x['clients']} | {x['ok']} | {x['rejected']} | {x['errors']} | "
                     f"{x['throughput_audio_s_per_s']:.2f} | {x['latency_p50']:.2f} | {x['latency_p95']:.2f} | "
                     f"{x['latency_p99']:.2f} |")
    lines.append("")
    for tr in r.get("transports", ["grpc"]):
        lines += [f"- {tr} serving overhead at N=1, paired per call (client latency / the server's own processing + "
                  f"queue time for that call, median): {t[f'{tr}_overhead_paired_n1']:.4f} "
                  f"({t[f'{tr}_overhead_paired_ms_n1']:.1f} ms)",
                  f"- {tr} serving overhead at N=1, unpaired ({tr} p50 / in-process p50, separate runs): "
                  f"{t[f'{tr}_overhead_vs_inprocess_n1']:.4f}",
                  f"- {tr} throughput at N = cores / best in-process throughput: "
                  f"{t[f'{tr}_throughput_at_cores_vs_best_inprocess']:.3f}"]
        pair = (r.get("paired_sequential_n1") or {}).get(tr)
        if pair:
            lines.append(f"- {tr} / in-process, sequential A/B pairs at N=1 (same clip back to back, order "
                         f"alternating; {pair['pairs']} pairs): median {pair['ratio_median']:.4f}, "
                         f"10-90 % {pair['ratio_p10']:.4f}-{pair['ratio_p90']:.4f}")
    lines += [f"- rejections with N <= admission limit ({r['admission_limit']}): {t['rejections_below_limit']}",
              f"- server RSS at the end {r['server_memory']['rss_mb']:.0f} MB, peak {t['server_peak_rss_mb']:.0f} MB"
              + (f" (server environment: {r['server_env']})" if r.get("server_env") else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--min-requests", type=int, default=6, help="at least this many calls per level")
    p.add_argument("--time-cap", type=float, default=180.0, help="seconds per level before no new call starts")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--max-queued", type=int, default=8)
    p.add_argument("--clips", type=int, default=3, help="distinct ~30 s clips, sent round-robin")
    p.add_argument("--rounds", type=int, default=2, help="passes over all levels (modes alternate order)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the server process (e.g. MALLOC_ARENA_MAX=2)")
    p.add_argument("--transports", nargs="+", default=["grpc"], choices=["grpc", "http"],
                   help="which of the server's transports to load (http: the OpenAI-compatible API)")
    p.add_argument("--paired", type=int, default=0, metavar="K",
                   help="also K sequential A/B passes at N=1 (each clip in-process and per transport, back to back)")
    p.add_argument("--suffix", default="", help="appended to the output file names")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    np.seterr(all="ignore")
    r = run(a.model, a.device, a.clients, a.requests_per_client, a.min_requests, a.time_cap, a.max_concurrent,
            a.max_queued, a.clips, a.rounds, dict(kv.split("=", 1) for kv in a.server_env), tuple(a.transports),
            a.paired)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"load-{a.model}-{r['device']}{a.suffix}"
    Path(f"{stem}.json").write_text(json.dumps(r, indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

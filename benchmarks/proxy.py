"""Proxy benchmark: what the verifying proxy adds over calling the upstream ASR directly.

    python benchmarks/proxy.py [--rounds 3] [--model tiny.en] [--n-short 4] [--n-30 2] [--long 120]

Loopback only and bounded. Starts faster-whisper-server 0.0.3 (tests/peers.py, its own venv) with
the local model as the upstream, and `whisper-guard serve --http-address ... --upstream ...` as
a subprocess in front of it. Every clip is sent with the same openai SDK code to both, paired
and interleaved: per round and clip, the two calls go back to back, in alternating order
(direct first, then guard first at the next clip and round), so drift on a shared host hits both.

Reported per clip and overall:
- added latency = guard call - direct call (paired, per clip: median over rounds), and that per
  second of audio;
- the guard's own time beyond its upstream exchange, from the same guarded call (wall time
  minus `guard.source.upstream_seconds` in its verbose_json): drift-free;
- peak RSS (VmHWM) and resident memory (VmRSS) of the guard process after the run, and the
  upstream's for scale.
Writes benchmarks/results/proxy-<model>-<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from guard.corpus import bench_dir
from guard.audio import decode_file  # noqa: E402
from guard.models import resolve  # noqa: E402
from peers import free_port, peer_server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BENCH = bench_dir()  # $WHISPER_GUARD_BENCH, else ../shared/bench
FIXTURES = ROOT / "tests" / "fixtures"
SR = 16000


@dataclass
class Clip:
    name: str
    cls: str
    data: bytes  # the file the client uploads
    filename: str
    seconds: float


def wav(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def pick_clips(n_short: int, n_30: int, long_seconds: list[float]) -> list[Clip]:
    """The test fixtures, plus (when the DEV corpus is there) the same deterministic picks as
    benchmarks/overhead.py: ~5 s English prompts, ~30 s mixtures, long concatenations."""
    clips = []
    for p in sorted(FIXTURES.glob("*.flac")):
        clips.append(Clip(p.stem, "fixture", p.read_bytes(), p.name, len(decode_file(p, max_seconds=600)) / SR))
    if (BENCH / "manifest.jsonl").is_file():
        from overhead import pick_clips as overhead_clips

        for c in overhead_clips(BENCH, n_short, n_30, long_seconds):
            clips.append(Clip(c.name, c.cls, wav(c.audio), f"{c.name}.wav", c.seconds))
    return clips


class GuardProcess:
    """`whisper-guard serve` with the HTTP API in proxy mode, on loopback ports of its own."""

    def __init__(self, model: str, upstream: str, extra: list[str]):
        self.http_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="proxy-bench-guard-", suffix=".log", delete=False)
        exe = Path(sys.executable).with_name("whisper-guard")
        cmd = [str(exe), "serve", "--model", model, "--address", f"127.0.0.1:{free_port()}",
               "--http-address", f"127.0.0.1:{self.http_port}", "--metrics-address", "",
               "--upstream", upstream, "--policy", "suppress", *extra]
        env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.base_url = f"http://127.0.0.1:{self.http_port}/v1"
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"guard exited {self.proc.returncode}: {Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("guard not ready in 180 s")
            time.sleep(0.3)

    def memory(self) -> dict:
        return memory(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def memory(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda key: round(int(status.split(key + ":")[1].split()[0]) / 1024, 1)  # noqa: E731
    return {"rss_mb": get("VmRSS"), "peak_rss_mb": get("VmHWM")}


def call(client, clip: Clip) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = client.audio.transcriptions.create(file=(clip.filename, clip.data), model="whisper-1",
                                           response_format="verbose_json", timestamp_granularities=["segment"])
    wall = time.perf_counter() - t0
    return wall, r.model_dump()


def norm(text: str) -> str:
    from whisper_normalizer.english import EnglishTextNormalizer

    return " ".join(EnglishTextNormalizer()(text).split())


def run(args) -> dict:
    import openai

    model = resolve(args.model, cache=Path.home() / ".cache" / "whisper-guard")
    clips = pick_clips(args.n_short, args.n_30, args.long)
    rows: dict[str, dict] = {c.name: {"clip": c.name, "class": c.cls, "seconds": round(c.seconds, 3),
                                      "direct": [], "guard": [], "guard_beyond_upstream": [], "upstream_in_guard": [],
                                      "texts": {}, "suppressed": []}
                             for c in clips}
    with peer_server(model.path, warm=FIXTURES / "speech-agent-alreadyon.flac", cpu_threads=args.threads) as peer:
        guard = GuardProcess(args.model, peer.base_url, ["--cpu-threads", str(args.threads)])
        try:
            direct = openai.OpenAI(base_url=peer.base_url, api_key="unused", max_retries=0, timeout=600)
            guarded = openai.OpenAI(base_url=guard.base_url, api_key="unused", max_retries=0, timeout=600)
            call(guarded, clips[0])  # warm both paths once (not measured)
            call(direct, clips[0])
            t_start = time.monotonic()
            load_before = os.getloadavg()
            k = 0
            for rnd in range(args.rounds):
                for clip in clips:
                    order = [("direct", direct), ("guard", guarded)]
                    if k % 2:
                        order.reverse()
                    k += 1
                    for name, client in order:
                        wall, body = call(client, clip)
                        row = rows[clip.name]
                        row[name].append(wall)
                        row["texts"].setdefault(name, set()).add(norm(body.get("text") or ""))
                        if name == "guard":
                            row["suppressed"].append(sum(1 for s in body.get("segments") or []
                                                         if (s.get("guard") or {}).get("verdict") == "suppress"))
                            up = float(body["guard"]["source"]["upstream_seconds"])
                            row["upstream_in_guard"].append(up)
                            row["guard_beyond_upstream"].append(wall - up)
                print(f"round {rnd + 1}/{args.rounds} done ({time.monotonic() - t_start:.0f} s)", flush=True)
            guard_mem = guard.memory()
            guard_mem["host_load_avg"] = [round(x, 1) for x in (*load_before, *os.getloadavg())]
            peer_mem = memory(peer.process.pid)
        finally:
            guard.stop()
    return summarise(args, list(rows.values()), guard_mem, peer_mem)


def summarise(args, rows: list[dict], guard_mem: dict, peer_mem: dict) -> dict:
    for r in rows:
        added = [g - d for g, d in zip(r["guard"], r["direct"])]
        r["added_s"] = round(statistics.median(added), 4)
        r["added_per_audio_s"] = round(r["added_s"] / r["seconds"], 4)
        r["direct_p50_s"] = round(statistics.median(r["direct"]), 4)
        r["guard_p50_s"] = round(statistics.median(r["guard"]), 4)
        r["ratio"] = round(r["guard_p50_s"] / r["direct_p50_s"], 3)
        r["beyond_upstream_s"] = round(statistics.median(r["guard_beyond_upstream"]), 4)
        r["beyond_upstream_per_audio_s"] = round(r["beyond_upstream_s"] / r["seconds"], 4)
        texts = r.pop("texts")
        r["direct_text"] = sorted(texts.get("direct", []))
        r["guard_text"] = sorted(texts.get("guard", []))
        r["text_unchanged"] = r["direct_text"] == r["guard_text"]
        r["suppressed_segments"] = max(r["suppressed"]) if r["suppressed"] else 0
        del r["suppressed"]
    total_audio = sum(r["seconds"] for r in rows)
    overall = {
        "clips": len(rows), "audio_seconds": round(total_audio, 1), "rounds": args.rounds,
        # pooled: sum of per-clip medians over audio seconds (long clips weigh by their length)
        "added_per_audio_s": round(sum(r["added_s"] for r in rows) / total_audio, 4),
        "beyond_upstream_per_audio_s": round(sum(r["beyond_upstream_s"] for r in rows) / total_audio, 4),
        "median_clip_added_s": round(statistics.median(r["added_s"] for r in rows), 4),
        "median_clip_ratio": round(statistics.median(r["ratio"] for r in rows), 3),
        "guard_memory": guard_mem, "upstream_memory": peer_mem,
        "unchanged_clips": sum(r["text_unchanged"] for r in rows),
    }
    return {"model": args.model, "device": "cpu", "threads": args.threads, "overall": overall, "clips": rows,
            "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
            "command": "python benchmarks/proxy.py " + " ".join(sys.argv[1:])}


def markdown(r: dict) -> str:
    o = r["overall"]
    lines = [f"# Verifying proxy over faster-whisper-server 0.0.3 ({r['model']}, {r['device']}, "
             f"{r['threads']} threads each)", "",
             f"`{r['command']}`: {o['clips']} clips, {o['audio_seconds']} s of audio, {o['rounds']} rounds, "
             "paired and interleaved (openai SDK, verbose_json, the same code against both).", "",
             f"- **Added latency per second of audio: {o['added_per_audio_s'] * 1000:.0f} ms** (guard call - direct "
             f"call, per-clip medians summed over audio seconds); the guard's own time beyond its upstream "
             f"exchange, from the same calls: {o['beyond_upstream_per_audio_s'] * 1000:.0f} ms per second of audio.",
             f"- Median over clips: +{o['median_clip_added_s'] * 1000:.0f} ms per call, guard/direct "
             f"{o['median_clip_ratio']:.2f}x.",
             f"- Text unchanged (normalised) on {o['unchanged_clips']}/{o['clips']} clips under suppress; "
             "the others had segments suppressed (see the table).",
             f"- Guard process memory: peak RSS {o['guard_memory']['peak_rss_mb']:.0f} MB, RSS after the run "
             f"{o['guard_memory']['rss_mb']:.0f} MB (upstream: peak {o['upstream_memory']['peak_rss_mb']:.0f} MB).",
             *([f"- Host load average (1, 5, 15 min) before and after: {o['guard_memory']['host_load_avg']} on "
                f"{r['host']['cpus']} CPUs: absolute times scale with it; the paired differences and ratios less so."]
               if "host_load_avg" in o["guard_memory"] else []),
             "", "| clip | class | audio s | direct p50 s | guard p50 s | added s | added ms per audio s | "
             "guard beyond upstream s | ratio | suppressed | text unchanged |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for c in r["clips"]:
        lines.append(f"| {c['clip']} | {c['class']} | {c['seconds']:.1f} | {c['direct_p50_s']:.3f} | "
                     f"{c['guard_p50_s']:.3f} | {c['added_s']:+.3f} | {c['added_per_audio_s'] * 1000:+.0f} | "
                     f"{c['beyond_upstream_s']:.3f} | {c['ratio']:.2f} | {c['suppressed_segments']} | "
                     f"{'yes' if c['text_unchanged'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-short", type=int, default=4)
    ap.add_argument("--n-30", type=int, default=2)
    ap.add_argument("--long", type=float, nargs="*", default=[120.0])
    ap.add_argument("--threads", type=int, default=2, help="CTranslate2 threads of the upstream and of the guard")
    ap.add_argument("--suffix", default="")
    args = ap.parse_args(argv)
    report = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"proxy-{args.model}-{report['device']}{args.suffix}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {RESULTS / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

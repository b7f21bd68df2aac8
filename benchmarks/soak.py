"""Soak: a real server under sustained mixed load at its concurrency limit; nothing lost, nothing leaks.

    python benchmarks/soak.py [--requests 2000] [--max-seconds 600] [--model tiny.en]
                              [--max-concurrent 2] [--max-queued 8] [--clients N] [--seed 0]

Starts `python -m guard.server` (loopback, ephemeral ports) and sends `--requests` calls from
`--clients` threads (default: max_concurrent + max_queued, i.e. every admission place in use), each
with its own channel, in a seeded random mix:

  transcribe-speech / -music / -sfx   Transcribe on the bundled clips (encoded FLAC or raw PCM16)
  verify-speech / verify-invented     Verify with the true transcript / an invented one
  stream-speech / stream-long         StreamTranscribe, random piece sizes (20 ms..2 s, odd bytes)
  stream-cancel                       a stream the client cancels half way
  bad-*                               corrupt audio, absurd options, an hour-long bomb, invalid
                                      UTF-8 bytes, a stream without config

Every call must end in a reply or a status within its deadline (a client-side deadline counts as
lost). Replies are checked against the baseline taken before the load (same text for the same
clip; temperature 0 is deterministic), streams for contiguous sequence numbers, unique segment
indexes, one summary last and a text equal to the unary call's. Bad inputs must get their
documented code. The server's RSS, open fds and threads are sampled from /proc every
`--sample-seconds`, and measured idle after the warm-up (the first `--warmup` share of the calls)
and after each of `--checkpoints` segments of the rest: from the first idle point to the last, RSS
must grow less than 5% and fds/threads stay flat. The server's own request counters must equal the
client's tally, and SIGTERM must drain it to exit 0.

New calls stop at `--max-seconds` (calls in flight finish); the report says how many were sent.
Writes benchmarks/results/soak.{json,md}; exit status 1 if any check failed.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import queue
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from guard.audio import decode_file  # noqa: E402
from guard.grpc_gen import guard_pb2 as pb  # noqa: E402
from guard.grpc_gen import guard_pb2_grpc  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
CLIPS = {"speech": FIXTURES / "speech-agent-alreadyon.flac", "music": FIXTURES / "nonspeech-music.flac",
         "sfx": FIXTURES / "nonspeech-sfx.flac", "long": FIXTURES / "mixture-speech-then-music-36s.flac"}
SPEECH_TEXT = "That agent is already logged on. Please enter your agent number followed by the pound key."
MIX = {  # kind: weight
    "transcribe-speech": 18, "transcribe-music": 10, "transcribe-sfx": 5, "verify-speech": 10,
    "verify-invented": 5, "stream-speech": 18, "stream-long": 4, "stream-cancel": 3,
    "bad-audio": 5, "bad-options": 5, "bad-bomb": 3, "bad-utf8": 3, "bad-stream": 3,
}
EXPECTED = {"bad-audio": "INVALID_ARGUMENT", "bad-options": "INVALID_ARGUMENT", "bad-bomb": "OUT_OF_RANGE",
            "bad-utf8": "INVALID_ARGUMENT", "bad-stream": "INVALID_ARGUMENT", "stream-cancel": "CANCELLED"}
METHOD = {k: ("StreamTranscribe" if k.startswith(("stream", "bad-stream")) else
              "Verify" if k.startswith(("verify", "bad-utf8")) else "Transcribe") for k in MIX}
DEADLINE = 300.0


# ---- inputs ---------------------------------------------------------------------------------------------------


def pcm16(path: Path) -> bytes:
    samples = decode_file(path, max_seconds=3600)
    return np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def silent_flac_hour() -> bytes:
    """An hour of digital silence in ~14 KB of FLAC: refused on its declared duration."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=8000, layout="mono", options={"frame_size": "65535"})
        stream.codec_context.format = "s16"
        zeros = np.zeros((1, 65535), np.int16)
        pts, n = 0, 8000 * 3600
        while pts < n:
            frame = av.AudioFrame.from_ndarray(zeros[:, :min(65535, n - pts)], format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8000, pts
            pts += frame.samples
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _field(number: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


class Inputs:
    def __init__(self):
        self.encoded = {k: p.read_bytes() for k, p in CLIPS.items()}
        self.pcm = {k: pcm16(p) for k, p in CLIPS.items()}
        self.bomb = silent_flac_hour()
        # a VerifyRequest whose transcript text is not UTF-8 (the protobuf encoder would refuse it)
        self.bad_utf8 = _field(1, self.encoded["music"]) + _field(3, _field(1, b"Thanks for \xff\xfe watching"))


# ---- one call -------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    code: str
    seconds: float
    problems: list[str] = field(default_factory=list)
    started: float = 0.0
    retries: int = 0


def pieces(pcm: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(pcm):
        step = rng.randint(640, 64000) + rng.choice([0, 1, 3])  # 20 ms .. 2 s, sometimes splitting a sample
        out.append(pcm[i:i + step])
        i += step
    return out


def check_stream(events: list[pb.SegmentEvent], expected_text: str | None) -> list[str]:
    problems = []
    if [e.sequence for e in events] != list(range(1, len(events) + 1)):
        problems.append(f"sequence numbers not contiguous: {[e.sequence for e in events][:20]}")
    kinds = [e.WhichOneof("event") for e in events]
    if not kinds or kinds[-1] != "summary" or kinds.count("summary") != 1:
        problems.append(f"summary not exactly once and last: {kinds[-5:]}")
        return problems
    segments = [e.segment for e in events[:-1]]
    if [s.index for s in segments] != list(range(len(segments))):
        problems.append(f"segment indexes duplicated or missing: {[s.index for s in segments]}")
    if len({e.request_id for e in events}) != 1:
        problems.append("request_id changed within a stream")
    summary = events[-1].summary
    if summary.summary.segments != len(segments):
        problems.append(f"summary counts {summary.summary.segments} segments, {len(segments)} were sent")
    if expected_text is not None and summary.text != expected_text:
        problems.append(f"stream text {summary.text!r} != unary {expected_text!r}")
    return problems


def call(kind: str, stub: guard_pb2_grpc.GuardStub, channel: grpc.Channel, inputs: Inputs, baseline: dict,
         rng: random.Random) -> Outcome:
    t0 = time.monotonic()
    problems: list[str] = []
    code = "OK"
    try:
        if kind.startswith("transcribe-"):
            clip = kind.split("-", 1)[1]
            if rng.random() < 0.5:
                request, key = pb.TranscribeRequest(encoded=inputs.encoded[clip]), clip
            else:  # PCM16 re-quantized from the decoded file: slightly different audio, its own baseline
                request = pb.TranscribeRequest(pcm=pb.RawPcm(data=inputs.pcm[clip], sample_rate=16000))
                key = clip + "-pcm"
            reply = stub.Transcribe(request, timeout=DEADLINE)
            if reply.text != baseline[key]:
                problems.append(f"{key}: text {reply.text!r} != baseline {baseline[key]!r}")
        elif kind == "verify-speech":
            reply = stub.Verify(pb.VerifyRequest(encoded=inputs.encoded["speech"], transcript=[
                pb.TranscriptSegment(text="That agent is already logged on.", start_seconds=0.0, end_seconds=2.3),
                pb.TranscriptSegment(text="Please enter your agent number followed by the pound key.",
                                     start_seconds=2.3, end_seconds=5.4)]), timeout=DEADLINE)
            if len(reply.segments) != 2 or any(s.verdict != pb.VERDICT_PASS for s in reply.segments):
                problems.append(f"verify-speech: {[(s.text, s.verdict) for s in reply.segments]}")
        elif kind == "verify-invented":
            reply = stub.Verify(pb.VerifyRequest(encoded=inputs.encoded["music"], transcript=[
                pb.TranscriptSegment(text="Thank you for watching!")]), timeout=DEADLINE)
            if len(reply.segments) != 1 or reply.segments[0].score != baseline["verify-invented"]:
                problems.append(f"verify-invented score {[s.score for s in reply.segments]} != "
                                f"{baseline['verify-invented']}")
        elif kind in ("stream-speech", "stream-long", "stream-cancel"):
            clip = "long" if kind == "stream-long" else "speech"
            messages = [pb.AudioChunk(config=pb.StreamConfig(sample_rate=16000))]
            messages += [pb.AudioChunk(pcm16=p) for p in pieces(inputs.pcm[clip], rng)]
            if kind == "stream-cancel":
                hold = threading.Event()

                def held():
                    yield from messages[:max(2, len(messages) // 2)]
                    hold.wait(DEADLINE)

                responses = stub.StreamTranscribe(held(), timeout=DEADLINE)
                time.sleep(rng.uniform(0.05, 0.5))
                responses.cancel()
                hold.set()
                list(responses)
            else:
                events = list(stub.StreamTranscribe(iter(messages), timeout=DEADLINE))
                problems += check_stream(events, baseline[clip + "-pcm"])
        elif kind == "bad-audio":
            stub.Transcribe(pb.TranscribeRequest(encoded=inputs.encoded["speech"][: rng.randint(10, 4000)]),
                            timeout=DEADLINE)
        elif kind == "bad-options":
            stub.Transcribe(pb.TranscribeRequest(encoded=inputs.encoded["music"], options=rng.choice([
                pb.Options(beam_size=99), pb.Options(flag_threshold=float("nan")), pb.Options(policy=42),
                pb.Options(model="../../etc/passwd"), pb.Options(language="x" * 20)])), timeout=DEADLINE)
        elif kind == "bad-bomb":
            stub.Transcribe(pb.TranscribeRequest(encoded=inputs.bomb), timeout=DEADLINE)
        elif kind == "bad-utf8":
            channel.unary_unary("/whisperguard.v1.Guard/Verify")(inputs.bad_utf8, timeout=DEADLINE)
        elif kind == "bad-stream":
            list(stub.StreamTranscribe(iter([pb.AudioChunk(pcm16=inputs.pcm["speech"][:32000])]), timeout=DEADLINE))
        else:  # pragma: no cover
            raise ValueError(kind)
    except grpc.RpcError as e:
        code = e.code().name
        if code == "DEADLINE_EXCEEDED":
            problems.append("no reply within the deadline (lost)")
    except Exception as e:  # noqa: BLE001 - a client-side failure is a finding too
        code = "CLIENT_ERROR"
        problems.append(f"{type(e).__name__}: {e}")
    expected = EXPECTED.get(kind, "OK")
    if code != expected and not (code == "RESOURCE_EXHAUSTED"):
        problems.append(f"{kind}: code {code}, expected {expected}")
    return Outcome(kind, code, time.monotonic() - t0, problems, t0)


# ---- the server and its resources ----------------------------------------------------------------------------


class Server:
    def __init__(self, args):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "WHISPER_GUARD_LOG_LEVEL": "INFO"}
        cmd = [sys.executable, "-m", "guard.server", "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
               "--model", args.model, "--max-concurrent", str(args.max_concurrent), "--max-queued",
               str(args.max_queued), "--grace-seconds", "60"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.log: list[str] = []
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.address = self._expect(r"listening on (\S+)")
        self.metrics_url = self._expect(r"metrics at (\S+)")
        self._expect(r"(SERVING) models", timeout=300)

    def _pump(self):
        for line in self.proc.stdout:
            if " request " not in line:  # one INFO line per request: keep the rest
                self.log.append(line)
                self.lines.put(line)

    def _expect(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if m := re.search(pattern, line):
                return m.group(1)
        raise SystemExit("server did not start:\n" + "".join(self.log))

    def sample(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return {"rss_mb": int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1)) / 1024,
                "threads": int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1)),
                "fds": len(os.listdir(f"/proc/{self.proc.pid}/fd"))}

    def counters(self) -> dict[tuple[str, str], float]:
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        out = {}
        for m in re.finditer(r"^whisper_guard_requests_total\{([^}]*)\} (\S+)$", text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[labels["method"], labels["code"]] = float(m.group(2))
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


# ---- run --------------------------------------------------------------------------------------------------------


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "guard"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (guard/ modified)" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=600.0, help="no new call after this (calls in flight finish)")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--max-concurrent", type=int, default=2)
    ap.add_argument("--max-queued", type=int, default=8)
    ap.add_argument("--clients", type=int, default=0, help="client threads; 0 = max_concurrent + max_queued")
    ap.add_argument("--warmup", type=float, default=0.2,
                    help="share of the calls run first; the server measured idle after them is the baseline")
    ap.add_argument("--checkpoints", type=int, default=4, help="idle measurements after the warm-up")
    ap.add_argument("--sample-seconds", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak")
    args = ap.parse_args(argv)
    clients = args.clients or args.max_concurrent + args.max_queued
    rng = random.Random(args.seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=args.requests)
    inputs = Inputs()

    t_start = time.monotonic()
    server = Server(args)
    print(f"server {server.address} up in {time.monotonic() - t_start:.1f} s; {args.requests} calls, "
          f"{clients} clients, cap {args.max_seconds:.0f} s", flush=True)
    channel = grpc.insecure_channel(server.address)
    stub = guard_pb2_grpc.GuardStub(channel)
    baseline = {clip: stub.Transcribe(pb.TranscribeRequest(encoded=data), timeout=DEADLINE).text
                for clip, data in inputs.encoded.items()}
    baseline.update({clip + "-pcm": stub.Transcribe(pb.TranscribeRequest(pcm=pb.RawPcm(data=data, sample_rate=16000)),
                                                    timeout=DEADLINE).text for clip, data in inputs.pcm.items()})
    baseline["verify-invented"] = stub.Verify(pb.VerifyRequest(encoded=inputs.encoded["music"], transcript=[
        pb.TranscriptSegment(text="Thank you for watching!")]), timeout=DEADLINE).segments[0].score
    assert baseline["speech"] == SPEECH_TEXT, baseline["speech"]
    before = server.counters()

    samples: list[dict] = []
    refusals: list[Outcome] = []  # RESOURCE_EXHAUSTED answers (each retried until the call got in)
    done = collections.Counter()
    stop_sampling = threading.Event()

    def sampler():
        while not stop_sampling.is_set():
            samples.append({"t": round(time.monotonic() - t_load, 2), "completed": sum(done.values()),
                            **server.sample()})
            stop_sampling.wait(args.sample_seconds)

    local = threading.local()

    def worker(i: int) -> Outcome | None:
        if time.monotonic() - t_load > args.max_seconds:
            return None
        if not hasattr(local, "stub"):
            local.channel = grpc.insecure_channel(server.address)
            local.stub = guard_pb2_grpc.GuardStub(local.channel)
            local.rng = random.Random(args.seed * 1000 + threading.get_ident() % 1000)
        for attempt in range(30):  # a refused call is retried with backoff, as the README tells clients to
            out = call(kinds[i], local.stub, local.channel, inputs, baseline, local.rng)
            done[out.code] += 1
            if out.code != "RESOURCE_EXHAUSTED":
                break
            refusals.append(out)
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * local.rng.uniform(0.5, 1.0))
        out.retries = attempt
        return out

    t_load = time.monotonic()
    threading.Thread(target=sampler, daemon=True).start()
    outcomes: list[Outcome] = []
    warm_n = max(clients, int(args.requests * args.warmup))
    bounds = [0, warm_n] + [warm_n + (args.requests - warm_n) * k // args.checkpoints
                            for k in range(1, args.checkpoints + 1)]
    idle_points: list[dict] = []  # the server measured idle after the warm-up and after each main segment
    with ThreadPoolExecutor(clients, thread_name_prefix="soak-client") as pool:
        for phase, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            for out in pool.map(worker, range(lo, hi)):
                if out is not None:
                    outcomes.append(out)
                    if len(outcomes) % 50 == 0:
                        print(f"  {len(outcomes)}/{args.requests} calls, {time.monotonic() - t_load:.0f} s, "
                              f"{dict(done)}", flush=True)
            time.sleep(2.0)  # every call of the segment has ended: let the server settle, then measure it idle
            points = []
            for _ in range(5):
                points.append(server.sample())
                time.sleep(0.5)
            idle_points.append({"after": "warm-up" if phase == 0 else f"segment {phase}", "completed": len(outcomes),
                                **{k: statistics.median(p[k] for p in points) for k in points[0]}})
            print(f"  idle: {idle_points[-1]}", flush=True)
    load_seconds = time.monotonic() - t_load
    stop_sampling.set()
    idle = idle_points[-1]
    after = server.counters()
    exit_code = server.stop()

    # ---- checks ----
    checks: dict[str, dict] = {}
    problems = [p for o in outcomes for p in o.problems]
    lost = [o for o in outcomes if o.code in ("DEADLINE_EXCEEDED", "CLIENT_ERROR", "UNKNOWN")]
    checks["every call ended with a reply or a status"] = {"ok": not lost, "lost": len(lost)}
    stream_problems = [p for o in outcomes if o.kind.startswith("stream") for p in o.problems]
    checks["streams: contiguous sequence, no duplicate or missing segment, same text as unary"] = {
        "ok": not stream_problems, "streams": sum(o.kind in ("stream-speech", "stream-long") for o in outcomes),
        "problems": stream_problems[:10]}
    checks["replies equal the pre-load baseline; bad inputs get their code"] = {
        "ok": not [p for p in problems if p not in stream_problems], "problems": problems[:20]}
    internal = sum(v for (m, c), v in after.items() if c in ("INTERNAL", "UNKNOWN")) - \
        sum(v for (m, c), v in before.items() if c in ("INTERNAL", "UNKNOWN"))
    checks["no INTERNAL/UNKNOWN on the server"] = {"ok": internal == 0, "count": internal}
    client_tally = collections.Counter((METHOD[o.kind], o.code) for o in outcomes + refusals)
    server_tally = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    server_tally = {k: v for k, v in server_tally.items() if v}
    mismatch = {f"{m}/{c}": (client_tally.get((m, c), 0), server_tally.get((m, c), 0))
                for (m, c) in set(client_tally) | set(server_tally)
                if client_tally.get((m, c), 0) != server_tally.get((m, c), 0)}
    checks["server counters equal the client tally"] = {"ok": not mismatch, "mismatch (client, server)": mismatch}
    base = idle_points[0]
    post = [x for x in samples if x["completed"] >= base["completed"]]
    growth = (idle["rss_mb"] - base["rss_mb"]) / base["rss_mb"]
    slope = float(np.polyfit([x["completed"] for x in post], [x["rss_mb"] for x in post], 1)[0]) * 100 \
        if len({x["completed"] for x in post}) > 2 else float("nan")
    checks["RSS grows < 5% after warm-up (idle after warm-up vs idle after the load)"] = {
        "ok": growth < 0.05, "after_warmup_mb": round(base["rss_mb"], 1), "after_load_mb": round(idle["rss_mb"], 1),
        "growth_pct": round(100 * growth, 2),
        "idle_checkpoints_mb": [round(x["rss_mb"], 1) for x in idle_points],
        "max_during_load_mb": round(max(x["rss_mb"] for x in post), 1),
        "trend_during_load_mb_per_100_calls": round(slope, 2), "calls_after_warmup": len(outcomes) - base["completed"]}
    checks["threads flat (idle, after warm-up vs after the load)"] = {
        "ok": idle["threads"] <= base["threads"] + 2, "idle_checkpoints": [x["threads"] for x in idle_points],
        "max_during_load": max(x["threads"] for x in post)}
    checks["open fds flat (idle, after warm-up vs after the load)"] = {
        "ok": idle["fds"] <= base["fds"] + 2, "idle_checkpoints": [x["fds"] for x in idle_points],
        "max_during_load": max(x["fds"] for x in post)}
    checks["SIGTERM drains to exit 0"] = {"ok": exit_code == 0, "exit_code": exit_code}
    ok = all(c["ok"] for c in checks.values())

    by_kind = {}
    for kind in MIX:
        rows = [o for o in outcomes if o.kind == kind]
        lat = [o.seconds for o in rows if o.code not in ("RESOURCE_EXHAUSTED",)]
        by_kind[kind] = {"calls": len(rows), "codes": dict(collections.Counter(o.code for o in rows)),
                         "p50_s": round(percentile(lat, 50), 3), "p95_s": round(percentile(lat, 95), 3),
                         "max_s": round(max(lat), 3) if lat else None}
    result = {
        "ok": ok,
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "clients": clients,
                   "env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "WHISPER_GUARD_"))}},
        "requested": args.requests, "sent": len(outcomes), "stopped_by_time_cap": len(outcomes) < args.requests,
        "load_seconds": round(load_seconds, 1), "calls_per_second": round(len(outcomes) / load_seconds, 3),
        "codes": dict(collections.Counter(o.code for o in outcomes)), "refusals_retried": len(refusals),
        "calls_retried": sum(1 for o in outcomes if o.retries), "by_kind": by_kind, "checks": checks,
        "samples": samples, "idle": idle_points,
        "commit": _commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "server_log_tail": server.log[-20:],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if ok else 1


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [
        "# Soak: whisper-guard under sustained mixed load",
        "",
        f"`{r['command']}` (commit {r.get('commit', 'unknown')})",
        "",
        f"Model {c['model']}, `max_concurrent={c['max_concurrent']}`, `max_queued={c['max_queued']}`, "
        f"{c['clients']} client threads (every admission place in use), {r['machine']['cpus']} CPUs "
        f"(load average at the end {', '.join(f'{x:.1f}' for x in r['machine']['load_average_at_end'])}).",
        f"Sent **{r['sent']}** of {r['requested']} calls in {r['load_seconds']:.0f} s "
        f"({r['calls_per_second']:.2f} calls/s)" + (" - stopped by the time cap" if r["stopped_by_time_cap"] else "")
        + f"; codes: {', '.join(f'{k} {v}' for k, v in sorted(r['codes'].items()))}."
        + (f" {r['refusals_retried']} `RESOURCE_EXHAUSTED` refusals were answered and retried with backoff "
           f"({r['calls_retried']} calls needed a retry): a client that cancels moves on at once while the server "
           "finishes the 30 s window it is decoding for it, so for a moment every place is taken."
           if r["refusals_retried"] else ""),
        "",
        f"**Result: {'PASS' if r['ok'] else 'FAIL'}**",
        "",
        "| check | result | details |",
        "| --- | --- | --- |",
    ]
    for name, check in r["checks"].items():
        details = ", ".join(f"{k}={v}" for k, v in check.items() if k != "ok" and v not in ([], {}))
        lines.append(f"| {name} | {'pass' if check['ok'] else '**FAIL**'} | {details} |")
    lines += ["", "| kind | calls | codes | p50 s | p95 s | max s |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, k in r["by_kind"].items():
        codes = ", ".join(f"{a} {b}" for a, b in sorted(k["codes"].items()))
        lines.append(f"| {kind} | {k['calls']} | {codes} | {k['p50_s']} | {k['p95_s']} | {k['max_s']} |")
    s = r["samples"]
    if s:
        lines += ["", "Server resources (sampled from /proc): "
                  f"RSS {s[0]['rss_mb']:.0f} MB at the start of the load, {max(x['rss_mb'] for x in s):.0f} MB max, "
                  f"{s[-1]['rss_mb']:.0f} MB at the end; threads {s[0]['threads']}..{max(x['threads'] for x in s)}; "
                  f"fds {s[0]['fds']}..{max(x['fds'] for x in s)}. Measured idle (median of 5 samples, 2 s after "
                  "the last call of each segment): " + "; ".join(
                      f"after {p['after']} ({p['completed']} calls) {p['rss_mb']:.0f} MB, {p['threads']:.0f} threads, "
                      f"{p['fds']:.0f} fds" for p in r["idle"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

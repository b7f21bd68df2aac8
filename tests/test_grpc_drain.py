"""`python -m guard.server` as a real process: loading, serving, SIGTERM drain, exit 0."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_fixtures import REPO, SPEECH, SPEECH_THEN_MUSIC, pcm16, rpc_error
from guard.client import GuardClient
from guard.grpc_gen import guard_pb2 as pb

NOT_SERVING, SERVING = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING


class ServerProcess:
    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WHISPER_GUARD_LOG_LEVEL": "INFO"}
        self.proc = subprocess.Popen([sys.executable, "-m", "guard.server", *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)
            self.lines.put(line)

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, "server exited:\n" + "".join(self.log)
                continue
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "".join(self.log))


def _in_flight(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    m = re.search(r"^whisper_guard_requests_in_flight (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_sigterm_drains_in_flight_calls_then_exits_zero():
    server = ServerProcess("--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
                           "--grace-seconds", "60", "--max-concurrent", "1")
    try:
        address = server.expect(r"listening on (\S+)").group(1)
        with GuardClient(address, timeout=120) as client:
            # while the model loads: NOT_SERVING, and Guard calls are UNAVAILABLE
            statuses: list[int] = []
            watch = health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest(service=""))
            watcher = threading.Thread(target=lambda: _collect(watch, statuses), daemon=True)
            watcher.start()
            loading = rpc_error(client.transcribe, SPEECH)
            assert loading.code() == grpc.StatusCode.UNAVAILABLE and "loading" in loading.details()
            metrics_url = server.expect(r"metrics at (\S+)").group(1)
            assert client.wait_ready(120)

            # a call of several seconds is running when SIGTERM arrives
            long = pb.TranscribeRequest(pcm=pb.RawPcm(data=pcm16(SPEECH_THEN_MUSIC) * 2, sample_rate=16000))
            in_flight = client.stub.Transcribe.future(long, timeout=120)
            deadline = time.monotonic() + 30
            while _in_flight(metrics_url) < 1:
                assert time.monotonic() < deadline and not in_flight.done()
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            assert server.expect(r"draining: .*?(\d+) in flight").group(1) == "1"

            assert client.health() == "NOT_SERVING"
            refused = rpc_error(client.transcribe, SPEECH)
            assert refused.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.details()

            reply = in_flight.result(timeout=120)  # the call in flight completes normally
            assert "agent" in reply.text.lower() and reply.summary.audio_seconds > 70
            assert server.proc.wait(timeout=60) == 0
            watcher.join(10)
        assert statuses[:1] == [NOT_SERVING], statuses
        assert SERVING in statuses and statuses[statuses.index(SERVING):][-1] == NOT_SERVING, statuses
        assert not any("Traceback" in line for line in server.log), "".join(server.log)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


def _collect(watch, statuses: list[int]) -> None:
    try:
        for reply in watch:
            statuses.append(reply.status)
    except grpc.RpcError:
        pass  # the server went away: the watch ends


def test_unusable_address_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "guard.server", "--address", "256.1.1.1:1",
                           "--metrics-address", ""], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv, code", [(["--max-concurrent", "0"], 2), (["--policy", "loud"], 2)])
def test_bad_settings_exit_with_usage_code(argv, code):
    proc = subprocess.run([sys.executable, "-m", "guard.server", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr

"""`whisper-guard serve --http-address` as a real process: both transports on one Guard, SIGTERM
drains both, exit 0."""
from __future__ import annotations

import threading
import time

import grpc
import httpx

from conftest import is_speech_text
from grpc_fixtures import SPEECH, SPEECH_THEN_MUSIC, pcm16, rpc_error, wav_bytes
from guard.client import GuardClient
from test_grpc_drain import ServerProcess, _in_flight


def test_one_process_serves_both_transports_and_sigterm_drains_both():
    server = ServerProcess("--address", "127.0.0.1:0", "--http-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
                           "--grace-seconds", "120", "--max-concurrent", "1")
    try:
        address = server.expect(r"whisper-guard listening on (\S+)").group(1)
        url = server.expect(r"HTTP \(OpenAI-compatible\) listening on (\S+)").group(1)
        metrics_url = server.expect(r"metrics at (\S+)").group(1)
        r = httpx.get(url + "/readyz", timeout=10)
        assert r.status_code in (200, 503)  # 503 while loading
        deadline = time.monotonic() + 180
        while httpx.get(url + "/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "".join(server.log)
            time.sleep(0.2)
        with GuardClient(address, timeout=120) as client, httpx.Client(base_url=url, timeout=180) as http:
            assert client.health() == "SERVING"
            assert is_speech_text(client.transcribe(SPEECH).text)
            r = http.post("/v1/audio/transcriptions", files={"file": ("s.flac", SPEECH.read_bytes())},
                          data={"response_format": "text"})
            assert r.status_code == 200 and is_speech_text(r.text)
            assert sum("model loaded" in line for line in server.log) == 1  # one Guard for both

            replies = []
            long = wav_bytes(pcm16(SPEECH_THEN_MUSIC))
            t = threading.Thread(target=lambda: replies.append(
                http.post("/v1/audio/transcriptions", files={"file": ("long.wav", long)})))
            t.start()
            deadline = time.monotonic() + 60
            while _in_flight(metrics_url) < 1:  # the long HTTP call is running
                assert time.monotonic() < deadline and t.is_alive()
                time.sleep(0.02)
            server.proc.send_signal(15)
            assert server.expect(r"draining: .*?(\d+) in flight").group(1) == "1"
            assert http.get("/readyz").status_code == 503
            refused = http.post("/v1/audio/transcriptions", files={"file": ("s.flac", SPEECH.read_bytes())})
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
            assert refused.headers["retry-after"]
            err = rpc_error(client.transcribe, SPEECH)
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.details()
            t.join(240)
            assert replies and replies[0].status_code == 200, replies and replies[0].text
            assert "agent" in replies[0].json()["text"].lower()
        assert server.proc.wait(timeout=60) == 0
        assert not any("Traceback" in line for line in server.log), "".join(server.log)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)

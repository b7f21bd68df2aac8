"""guard/upstream.py against real HTTP servers on loopback: faster-whisper-server 0.0.3 (the real
upstream, tests/peers.py) and small stdlib servers that are down, slow, or answer garbage."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer

import pytest
from conftest import MUSIC, SPEECH, SPEECH_TEXT
from prometheus_client import CollectorRegistry
from upstream_stubs import QuietHandler, answer, answer_json, closed_port, hang_up, raw, stub_upstream, verbose

from guard.config import Settings
from guard.upstream import (
    MAX_RESPONSE_BYTES,
    UpstreamAudio,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamConfigError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
    client_from_settings,
    display_url,
    forward_fields,
    read_token,
    upstream_message,
)
from guard.upstream_metrics import UpstreamMetrics
from whisper_normalizer.english import EnglishTextNormalizer

norm = EnglishTextNormalizer()


def audio(path=SPEECH) -> UpstreamAudio:
    return UpstreamAudio(path.read_bytes(), path.name, "audio/flac")


def errors(reg: CollectorRegistry, kind: str) -> float:
    return reg.get_sample_value("whisper_guard_upstream_errors_total", {"kind": kind}) or 0.0


def calls(reg: CollectorRegistry, outcome: str) -> float:
    return reg.get_sample_value("whisper_guard_upstream_request_duration_seconds_count", {"outcome": outcome}) or 0.0


# ------------------------------------------------------------------ the real upstream
def test_real_upstream_returns_timed_segments(peer):
    reg = CollectorRegistry()
    client = UpstreamClient(peer.base_url, observer=UpstreamMetrics(reg))
    try:
        # The client asked for plain text: the upstream is asked for verbose_json all the same.
        t = client.transcribe(audio(), [("model", "whisper-1"), ("response_format", "text")])
        assert norm(t.text) == norm(SPEECH_TEXT)
        assert t.segments and all(s.start is not None and s.end > s.start for s in t.segments)
        assert norm("".join(s.text for s in t.segments)) == norm(SPEECH_TEXT)
        assert t.upstream == peer.base_url and t.model == "whisper-1" and t.seconds > 0
        m = client.transcribe(audio(MUSIC), [])
        assert m.segments, "the peer is configured like the guard (no window skipped): tiny.en writes text on music"
    finally:
        client.close()
    assert calls(reg, "ok") == 2 and calls(reg, "error") == 0


def test_real_upstream_error_status_carries_its_message(peer):
    # faster-whisper-server rejects a file it cannot decode with its own message; the client
    # must surface it (status, text), not a generic failure.
    client = UpstreamClient(peer.base_url)
    try:
        with pytest.raises(UpstreamError_) as e:
            client.transcribe(UpstreamAudio(b"this is not audio", "x.flac"), [])
    finally:
        client.close()
    assert e.value.upstream == peer.base_url


UpstreamError_ = (UpstreamStatus, UpstreamUnavailable)


# ------------------------------------------------------------------ what goes out
def test_forwards_the_clients_fields_but_asks_for_verbose_json_segments(tmp_path):
    token = tmp_path / "token"
    token.write_text("sk-upstream-123\n")
    with stub_upstream(answer_json(200, verbose([(0.0, 1.0, " hi")]))) as stub:
        client = client_from_settings(Settings(upstream=stub.base_url, upstream_token_file=token,
                                               upstream_model="large-v3"))
        try:
            client.transcribe(audio(), [("model", "whisper-1"), ("language", "en"), ("prompt", "agents"),
                                        ("temperature", "0.2"), ("response_format", "srt"),
                                        ("timestamp_granularities[]", "word"), ("stream", "true"),
                                        ("x_vendor_option", "kept")])
        finally:
            client.close()
    (r,) = stub.received
    assert r.path == "/v1/audio/transcriptions"
    assert r.headers["authorization"] == "Bearer sk-upstream-123"
    fields = dict(r.fields)
    assert fields["response_format"] == "verbose_json"
    assert [v for k, v in r.fields if k == "timestamp_granularities[]"] == ["segment"]
    assert "stream" not in fields
    assert [v for k, v in r.fields if k == "model"] == ["large-v3"]  # --upstream-model replaces the client's
    assert (fields["language"], fields["prompt"], fields["temperature"], fields["x_vendor_option"]) == \
        ("en", "agents", "0.2", "kept")
    assert r.files["file"] == (SPEECH.name, SPEECH.read_bytes())


def test_forward_fields_keeps_the_clients_model_without_a_configured_one():
    out = forward_fields([("model", "whisper-1"), ("response_format", "json")], None)
    assert out == [("model", "whisper-1"), ("response_format", "verbose_json"), ("timestamp_granularities[]", "segment")]


# ------------------------------------------------------------------ down
def test_down_upstream_is_unavailable_each_time():
    reg = CollectorRegistry()
    client = UpstreamClient(f"http://127.0.0.1:{closed_port()}/v1", retries=1, observer=UpstreamMetrics(reg))
    try:
        for _ in range(3):
            with pytest.raises(UpstreamUnavailable) as e:
                client.transcribe(audio(), [])
            assert "refused or unreachable" in e.value.message and e.value.status is None
    finally:
        client.close()
    assert errors(reg, "unavailable") == 3 and calls(reg, "error") == 3 and calls(reg, "ok") == 0


def test_connect_failures_are_retried_until_the_upstream_listens():
    # The socket is bound but not listening (connects are refused), then starts to listen: the
    # request, never sent before, goes through on a retry and is received once.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    received = []

    class Handler(QuietHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.path)
            body = json.dumps(verbose([(0.0, 1.0, " hi")])).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock

    def listen_later():  # noqa: E306
        time.sleep(0.3)
        sock.listen(8)
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=listen_later, daemon=True)
    thread.start()
    # retries=5: connects at 0, 0, 0.5, 1.5, 3.5, 7.5 s; listening from 0.3 s.
    client = UpstreamClient(f"http://127.0.0.1:{port}/v1", retries=5)
    try:
        t = client.transcribe(audio(), [])
    finally:
        client.close()
        server.shutdown()
        server.server_close()
    assert t.text == " hi" and received == ["/v1/audio/transcriptions"]


def test_a_sent_request_is_never_retried():
    # The upstream read the whole request and hung up: it may have done the work. One request,
    # one error, no second attempt.
    with stub_upstream(hang_up()) as stub:
        client = UpstreamClient(stub.base_url, retries=3)
        try:
            with pytest.raises(UpstreamUnavailable) as e:
                client.transcribe(audio(), [])
        finally:
            client.close()
    assert len(stub.received) == 1
    assert stub.base_url in e.value.message and "closed the connection without answering" in e.value.message


# ------------------------------------------------------------------ slow
def test_slow_upstream_is_a_timeout_each_time_and_not_retried():
    reg = CollectorRegistry()
    with stub_upstream(answer_json(200, verbose([(0.0, 1.0, " late")]), delay=3.0)) as stub:
        client = UpstreamClient(stub.base_url, timeout=0.5, retries=3, observer=UpstreamMetrics(reg))
        try:
            for _ in range(2):
                with pytest.raises(UpstreamTimeout) as e:
                    client.transcribe(audio(), [])
                assert "timed out waiting for its answer" in e.value.message and stub.base_url in e.value.message
            # a per-call limit (the caller's remaining deadline) shortens the configured one
            client.timeout = 60.0
            with pytest.raises(UpstreamTimeout):
                client.transcribe(audio(), [], timeout=0.3)
        finally:
            client.close()
        assert len(stub.received) == 3
    assert errors(reg, "timeout") == 3


# ------------------------------------------------------------------ garbage and error statuses
GARBAGE = [
    ("not json", answer(200, b"<html>proxy login</html>", "text/html"), "is not JSON"),
    ("wrong shape", answer_json(200, {"result": "ok"}), "is not a verbose_json transcription (text"),
    ("segments not a list", answer_json(200, {"text": "x", "segments": {"a": 1}}), "segments"),
    ("negative time", answer_json(200, {"text": "x", "segments": [{"start": -1, "end": 1, "text": "x"}]}),
     "segments.0.start"),
    ("NaN time", answer(200, b'{"text":"x","segments":[{"start":NaN,"end":1,"text":"x"}]}'), "is not"),
    ("text not a string", answer_json(200, {"text": 5}), "text"),
    ("not HTTP", raw(b"HTTP/1.1 OK-ish\r\nno header line\r\n\r\n"), "broke the HTTP protocol"),
    ("too large", answer(200, b"[" + b" " * (MAX_RESPONSE_BYTES + 10) + b"]"), "byte cap"),
]


@pytest.mark.parametrize("name,behaviour,expect", GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_a_bad_response_with_the_reason(name, behaviour, expect):
    reg = CollectorRegistry()
    with stub_upstream(behaviour) as stub:
        client = UpstreamClient(stub.base_url, observer=UpstreamMetrics(reg))
        try:
            for _ in range(2):  # each time, and the pool is still usable after it
                with pytest.raises(UpstreamBadResponse) as e:
                    client.transcribe(audio(), [])
                assert expect in e.value.message and stub.base_url in e.value.message
        finally:
            client.close()
    assert errors(reg, "bad_response") == 2


@pytest.mark.parametrize("status,body,expect", [
    (500, {"error": {"message": "CUDA out of memory", "type": "server_error"}}, "CUDA out of memory"),
    (400, {"detail": {"error": {"message": "Unsupported response_format: srt"}}}, "Unsupported response_format: srt"),
    (401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}, "Incorrect API key"),
    (503, {"detail": "model loading"}, "model loading"),
])
def test_error_status_keeps_the_upstreams_status_and_message(status, body, expect):
    reg = CollectorRegistry()
    with stub_upstream(answer_json(status, body)) as stub:
        client = UpstreamClient(stub.base_url, observer=UpstreamMetrics(reg))
        try:
            with pytest.raises(UpstreamStatus) as e:
                client.transcribe(audio(), [])
        finally:
            client.close()
    assert e.value.status == status and f"HTTP {status}" in e.value.message and expect in e.value.message
    assert e.value.http_status == 502 and len(stub.received) == 1
    assert errors(reg, "status") == 1


def test_plain_json_answer_becomes_one_untimed_segment():
    with stub_upstream(answer_json(200, {"text": " That agent is already logged on."})) as stub:
        client = UpstreamClient(stub.base_url)
        try:
            t = client.transcribe(audio(), [])
        finally:
            client.close()
    assert [(s.start, s.end, s.text) for s in t.segments] == [(None, None, " That agent is already logged on.")]


# ------------------------------------------------------------------ pool and concurrency
def test_bounded_pool_concurrent_calls_stay_independent():
    # 8 concurrent calls through a pool of 2 against an upstream that answers each with its own
    # prompt: every caller gets its own answer, and at most 2 connections were ever open.
    open_now, peak, lock = [0], [0], threading.Lock()

    def echo(stub, h, rec):
        with lock:
            open_now[0] += 1
            peak[0] = max(peak[0], open_now[0])
        try:
            time.sleep(0.1)
            answer_json(200, verbose([(0.0, 1.0, " " + dict(rec.fields)["prompt"])]))(stub, h, rec)
        finally:
            with lock:
                open_now[0] -= 1

    with stub_upstream(echo) as stub:
        client = UpstreamClient(stub.base_url, max_connections=2, connect_timeout=30)
        try:
            with ThreadPoolExecutor(8) as pool:
                outs = list(pool.map(lambda i: client.transcribe(audio(), [("prompt", f"call-{i}")]), range(8)))
        finally:
            client.close()
    assert [o.text for o in outs] == [f" call-{i}" for i in range(8)]
    assert len(stub.received) == 8
    assert 1 <= peak[0] <= 2


# ------------------------------------------------------------------ settings, token, helpers
def test_bad_settings_are_clear_errors(tmp_path):
    for url in ("ftp://h/v1", "127.0.0.1:8000", "http:///v1", "http://h:99999/v1", "http://h/v1?key=1"):
        with pytest.raises(UpstreamConfigError):
            UpstreamClient(url)
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    two = tmp_path / "two"
    two.write_text("a b\n")
    for f in (empty, two, tmp_path / "missing"):
        with pytest.raises(UpstreamConfigError) as e:
            read_token(f)
        assert "a b" not in e.value.message
    with pytest.raises(UpstreamConfigError):
        client_from_settings(Settings())


def test_display_url_drops_credentials_and_query():
    assert display_url("https://user:secret@asr.example:8443/v1/?k=1#x") == "https://asr.example:8443/v1"
    assert display_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


def test_upstream_message_shapes():
    assert upstream_message(b'{"error": {"message": "bad  key"}}') == "bad key"
    assert upstream_message(b'{"detail": {"error": {"message": "nope"}}}') == "nope"
    assert upstream_message(b'{"detail": [{"loc": ["body", "file"], "msg": "field required"}]}').startswith("[{")
    assert upstream_message(b"") == "(empty body)"
    assert len(upstream_message(b"x" * 5000)) == 303

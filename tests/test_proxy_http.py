"""The verifying proxy over HTTP: the official openai SDK -> the guard's HTTP API (proxy mode) ->
a real upstream on loopback (faster-whisper-server 0.0.3, tests/peers.py), or a small real HTTP
server that is down, slow, or answers garbage (tests/upstream_stubs.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import LONG, MUSIC, SPEECH, SPEECH_TEXT
from proxy_fixtures import SUPPRESS, running_proxy
from upstream_stubs import answer, answer_json, closed_port, stub_upstream, verbose
from whisper_normalizer.english import EnglishTextNormalizer


norm = EnglishTextNormalizer()


def sdk(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=kw.pop("timeout", 300),
                         **kw)


def transcribe(client: openai.OpenAI, path, **kw):
    with open(path, "rb") as f:
        return client.audio.transcriptions.with_raw_response.create(file=f, model="whisper-1", **kw)


def metric(server, name: str, **labels) -> float:
    return server.serving.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def proxy(guard, peer):
    with running_proxy(guard, peer.base_url, policy="flag") as server:
        yield server


# ------------------------------------------------------------------ through the real upstream
def test_speech_comes_through_unchanged_in_every_format(proxy, peer):
    direct = openai.OpenAI(base_url=peer.base_url, api_key="unused", max_retries=0, timeout=300)
    up = transcribe(direct, SPEECH, response_format="verbose_json").parse()
    client = sdk(proxy)

    raw = transcribe(client, SPEECH, response_format="verbose_json", timestamp_granularities=["segment"],
                     extra_body=SUPPRESS)
    assert raw.headers["x-whisper-guard-upstream"] == peer.base_url
    assert raw.headers["x-whisper-guard-upstream-model"] == "whisper-1"
    v = raw.parse()
    assert norm(v.text) == norm(up.text) == norm(SPEECH_TEXT)
    # the guard writes times to the millisecond (guard/transports/http/formats.py); the upstream's
    # floats can carry binary noise (2.2800000000000002 from one CPU's decode, 2.28 from another's)
    assert [(s.start, s.end, s.text) for s in v.segments] == \
        [(round(s.start, 3), round(s.end, 3), s.text) for s in up.segments]
    body = json.loads(raw.text)
    assert body["guard"]["source"] == {"kind": "upstream", "upstream": peer.base_url, "model": "whisper-1",
                                       "upstream_seconds": body["guard"]["source"]["upstream_seconds"]}
    assert all(s["guard"]["verdict"] == "pass" for s in body["segments"])

    j = json.loads(transcribe(client, SPEECH, response_format="json", extra_body=SUPPRESS).text)
    assert norm(j["text"]) == norm(SPEECH_TEXT) and j["guard"]["source"]["upstream"] == peer.base_url
    text = transcribe(client, SPEECH, response_format="text", extra_body=SUPPRESS).text
    assert norm(text) == norm(SPEECH_TEXT)
    srt = transcribe(client, SPEECH, response_format="srt").text
    cues = " ".join(line for line in srt.splitlines() if "-->" not in line and not line.strip().isdigit())
    assert "-->" in srt and norm(cues) == norm(SPEECH_TEXT)  # one cue or several, as the decode splits it


def test_nonspeech_hallucination_is_suppressed(proxy, peer):
    direct = openai.OpenAI(base_url=peer.base_url, api_key="unused", max_retries=0, timeout=300)
    up = transcribe(direct, MUSIC, response_format="json").parse()
    assert up.text.strip(), "the upstream writes text on music (the hallucination under test)"
    client = sdk(proxy)
    v = json.loads(transcribe(client, MUSIC, response_format="verbose_json", extra_body=SUPPRESS).text)
    assert v["text"] == "" and v["segments"]
    assert all(s["guard"]["verdict"] == "suppress" for s in v["segments"])
    assert norm("".join(s["text"] for s in v["segments"])) == norm(up.text)  # marked, not rewritten
    assert transcribe(client, MUSIC, response_format="text", extra_body=SUPPRESS).text.strip() == ""
    assert transcribe(client, MUSIC, response_format="vtt", extra_body=SUPPRESS).text.strip() == "WEBVTT"
    # the server default here is flag (at the calibrated threshold): kept, marked
    flagged = json.loads(transcribe(client, MUSIC, response_format="verbose_json").text)
    assert norm(flagged["text"]) == norm(up.text)
    assert all(s["guard"]["verdict"] == "flag" for s in flagged["segments"])


def test_stream_through_the_proxy(proxy, peer):
    with open(MUSIC, "rb") as f, httpx.Client(timeout=300) as http:
        r = http.post(proxy.url + "/v1/audio/transcriptions", files={"file": (MUSIC.name, f.read())},
                      data={"stream": "true", **SUPPRESS})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1]["type"] == "transcript.text.done"
    assert events[-1]["text"] == "" and events[-1]["guard"]["source"]["upstream"] == peer.base_url
    assert [e["guard"]["verdict"] for e in events if e["type"] == "transcript.text.segment"] == ["suppress"]
    assert not [e for e in events if e["type"] == "transcript.text.delta"]


def test_concurrent_calls_stay_independent(proxy):
    client = sdk(proxy)

    def one(i: int):
        path = (SPEECH, MUSIC)[i % 2]
        if i == 3:  # a bad request among them: its own 400, nobody else's
            with pytest.raises(openai.BadRequestError):
                client.audio.transcriptions.create(file=("x.flac", b"not audio"), model="whisper-1")
            return "bad"
        return json.loads(transcribe(client, path, response_format="json", extra_body=SUPPRESS).text)["text"]

    with ThreadPoolExecutor(5) as pool:
        out = list(pool.map(one, range(5)))
    assert [norm(t) if t != "bad" else t for t in out] == \
        [norm(SPEECH_TEXT), "", norm(SPEECH_TEXT), "bad", norm(SPEECH_TEXT)]
    assert metric(proxy, "whisper_guard_upstream_errors_total", kind="unavailable") == 0


# ------------------------------------------------------------------ broken upstreams
def expect_status(server, path, status: int, *contains: str, times: int = 2, **kw):
    client = sdk(server)
    for _ in range(times):
        with pytest.raises(openai.APIStatusError) as e:
            with open(path, "rb") as f:
                client.audio.transcriptions.create(file=f, model="whisper-1", **kw)
        assert e.value.status_code == status, e.value
        body = e.value.body if isinstance(e.value.body, dict) else {}
        message = body.get("message", "") or str(e.value)
        for c in contains:
            assert c in message, message
        assert "x-request-id" in e.value.response.headers
    return e.value


def test_down_upstream_is_502_each_time_and_the_guard_keeps_serving(guard):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with running_proxy(guard, url, upstream_retries=1) as server:
        err = expect_status(server, SPEECH, 502, url, "refused or unreachable", times=3)
        assert err.body["code"] == "upstream_failed" and err.body["type"] == "server_error"
        assert metric(server, "whisper_guard_upstream_errors_total", kind="unavailable") == 3
        assert metric(server, "whisper_guard_requests_total", method="Transcribe", code="UNAVAILABLE") == 3
        with urllib.request.urlopen(server.url + "/readyz", timeout=10) as r:
            assert r.status == 200
        # the rest of the API still works: /v1/audio/verify does not need the upstream
        with open(MUSIC, "rb") as f, httpx.Client(timeout=300) as http:
            v = http.post(server.url + "/v1/audio/verify", files={"file": (MUSIC.name, f.read())},
                          data={"transcript": "Thanks for watching!", **SUPPRESS})
        assert v.status_code == 200 and v.json()["text"] == ""


def test_slow_upstream_is_504_each_time(guard):
    with stub_upstream(answer_json(200, verbose([(0.0, 2.0, " late")]), delay=3.0)) as stub:
        with running_proxy(guard, stub.base_url, upstream_timeout=0.5) as server:
            err = expect_status(server, SPEECH, 504, stub.base_url, "timed out waiting for its answer")
            assert err.body["code"] == "upstream_timeout"
            assert metric(server, "whisper_guard_upstream_errors_total", kind="timeout") == 2
            # the caller's own deadline shortens the upstream's limit
            client = sdk(server)
            with pytest.raises(openai.APIStatusError) as e, open(SPEECH, "rb") as f:
                client.audio.transcriptions.create(file=f, model="whisper-1",
                                                   extra_headers={"x-request-timeout": "0.3"})
            assert e.value.status_code == 504
        assert len(stub.received) == 3  # never retried


@pytest.mark.parametrize("behaviour,status,contains", [
    (answer(200, b"<html>login</html>", "text/html"), 502, "is not JSON"),
    (answer_json(200, {"result": "ok"}), 502, "is not a verbose_json transcription"),
    (answer_json(500, {"error": {"message": "CUDA out of memory"}}), 502, "answered HTTP 500: CUDA out of memory"),
    (answer_json(200, verbose([(0.0, 1.0, " a"), (1.0, 33.0, " too long for a window")], duration=36.0)), 502,
     "cannot verify"),
], ids=["not-json", "wrong-shape", "error-status", "unverifiable"])
def test_garbage_from_the_upstream_is_502_with_its_message(guard, behaviour, status, contains):
    with stub_upstream(behaviour) as stub, running_proxy(guard, stub.base_url) as server:
        # the unverifiable case needs audio long enough to hold its 32 s segment (no clamping)
        expect_status(server, LONG if contains == "cannot verify" else MUSIC, status, contains, stub.base_url)


def test_bad_audio_is_400_and_never_reaches_the_upstream(guard):
    with stub_upstream(answer_json(200, verbose([(0.0, 1.0, " x")]))) as stub, \
            running_proxy(guard, stub.base_url) as server:
        with pytest.raises(openai.BadRequestError):
            sdk(server).audio.transcriptions.create(file=("x.flac", b"this is not audio"), model="whisper-1")
    assert stub.received == []


def test_fields_token_and_model_forwarded(guard, tmp_path):
    token = tmp_path / "upstream-token"
    token.write_text("sk-up-9\n")
    with stub_upstream(answer_json(200, verbose([(0.0, 2.0, " Thanks for watching!")], duration=2.1))) as stub, \
            running_proxy(guard, stub.base_url, upstream_token_file=token, upstream_model="large-v3") as server:
        raw = transcribe(sdk(server), MUSIC, response_format="srt", language="en", prompt="tabla",
                         temperature=0.0, extra_body=SUPPRESS)
        assert raw.headers["x-whisper-guard-upstream-model"] == "large-v3"
    (r,) = stub.received
    fields = dict(r.fields)
    assert r.headers["authorization"] == "Bearer sk-up-9"
    assert (fields["model"], fields["language"], fields["prompt"], fields["response_format"],
            fields["timestamp_granularities[]"]) == ("large-v3", "en", "tabla", "verbose_json", "segment")
    assert float(fields["temperature"]) == 0.0
    assert "guard_policy" not in fields and "stream" not in fields
    assert r.files["file"] == (MUSIC.name, MUSIC.read_bytes())


# ------------------------------------------------------------------ the command line
def test_serve_refuses_upstream_settings_that_cannot_work(tmp_path):
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    cases = [
        (["--upstream", "http://127.0.0.1:9/v1"], "give --http-address too"),
        (["--http-address", "127.0.0.1:0", "--upstream", "ftp://x/v1"], "upstream URL must be http(s)"),
        (["--http-address", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9/v1",
          "--upstream-token-file", str(empty)], "must hold one token"),
    ]
    for args, message in cases:
        out = subprocess.run([sys.executable, "-m", "guard.cli", "serve", "--address", "127.0.0.1:0",
                              "--metrics-address", "", *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and message in out.stderr, (args, out.stderr[-500:])
        assert "Traceback" not in out.stderr


def test_threads_do_not_leak_across_failing_calls(guard):
    # 12 failing calls (refused connections) leave no thread behind.
    with running_proxy(guard, f"http://127.0.0.1:{closed_port()}/v1", upstream_retries=0) as server:
        client = sdk(server)
        expect_status(server, MUSIC, 502, times=1)
        before = threading.active_count()
        for _ in range(12):
            with pytest.raises(openai.APIStatusError), open(MUSIC, "rb") as f:
                client.audio.transcriptions.create(file=f, model="whisper-1")
        assert threading.active_count() <= before + 1

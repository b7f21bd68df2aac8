"""The OpenAI-compatible HTTP API with real clients: the official openai SDK, curl, httpx.

Every test runs a real HttpServer on 127.0.0.1 around the session's real tiny.en Guard. Decodes
are compared by words (never exact floats or segmentation from one CPU's int8 kernels).
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import httpx
import openai
import pytest

from conftest import is_speech_text
from grpc_fixtures import NONSPEECH, SPEECH, SPEECH_TEXT, SPEECH_THEN_MUSIC, pcm16, wav_bytes
from http_fixtures import running_http, sample_value, sdk

SPEECH_SECONDS = 5.52


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module")
def server(guard):
    with running_http(guard) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return sdk(server)


def _create(client, path=SPEECH, **kw):
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(file=f, model=kw.pop("model", "whisper-1"), **kw)


# ---- every response_format ---------------------------------------------------------------------------


def test_json(client):
    r = _create(client)
    assert is_speech_text(r.text)
    guard = r.model_extra["guard"]
    assert guard["model"] == "tiny.en" and guard["segments"] >= 1 and guard["suppressed"] == 0
    assert all(0 <= m["score"] <= 1 and m["verdict"] in ("pass", "flag", "suppress") for m in guard["marks"])
    assert r.usage.seconds == pytest.approx(SPEECH_SECONDS, abs=0.1)


def test_text(client):
    r = _create(client, response_format="text")
    assert isinstance(r, str) and is_speech_text(r)


def _cues(body: str, sep: str) -> list[tuple[float, float, str]]:
    t = r"(\d\d):(\d\d):(\d\d)" + re.escape(sep) + r"(\d\d\d)"
    out = []
    for m in re.finditer(t + " --> " + t + r"\n(.+)\n", body):
        g = [int(x) for x in m.groups()[:8]]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        out.append((start, end, m.group(9)))
    return out


def test_srt(client):
    body = _create(client, response_format="srt")
    cues = _cues(body, ",")
    assert cues and body.startswith("1\n")
    assert is_speech_text(" ".join(c[2] for c in cues))
    assert all(0 <= s <= e <= SPEECH_SECONDS + 0.05 for s, e, _ in cues)


def test_vtt(client):
    body = _create(client, response_format="vtt")
    assert body.startswith("WEBVTT\n\n")
    cues = _cues(body, ".")
    assert cues and is_speech_text(" ".join(c[2] for c in cues))


def test_verbose_json_has_openais_segment_fields_and_a_guard_object(client):
    r = _create(client, response_format="verbose_json", timestamp_granularities=["segment"])
    assert r.language == "english" and r.duration == pytest.approx(SPEECH_SECONDS, abs=0.1)
    assert is_speech_text(r.text) and r.segments
    for s in r.segments:  # the SDK's TranscriptionSegment parsed every field
        assert isinstance(s.id, int) and isinstance(s.seek, int) and s.seek >= 0
        assert 0 <= s.start <= s.end <= SPEECH_SECONDS + 0.05
        assert s.tokens and all(isinstance(t, int) for t in s.tokens)
        assert s.temperature == 0.0 and s.avg_logprob < 0 and 0 <= s.no_speech_prob <= 1 and s.compression_ratio > 0
        guard = s.model_extra["guard"]
        assert 0 <= guard["score"] <= 1 and guard["verdict"] == "pass"
        assert guard["reasons"] and {"feature", "value", "contribution"} <= set(guard["reasons"][0])
    assert r.model_extra["guard"]["timings"]["decode"] >= 0


def test_word_granularity_gives_timed_scored_words(client):
    r = _create(client, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert r.words and r.segments
    assert words(" ".join(w.word for w in r.words)) == words(" ".join(s.text for s in r.segments))
    for w in r.words:
        assert 0 <= w.start <= w.end <= SPEECH_SECONDS + 0.05
        extra = w.model_extra
        assert 0 <= extra["probability"] <= 1 and 0 <= extra["guard"]["score"] <= 1
        assert extra["guard"]["verdict"] in ("pass", "flag", "suppress")
    only_words = _create(client, response_format="verbose_json", timestamp_granularities=["word"])
    assert only_words.words and not only_words.segments
    with pytest.raises(openai.BadRequestError) as info:  # OpenAI's rule: word timestamps need verbose_json
        _create(client, response_format="json", timestamp_granularities=["word"])
    assert info.value.body["param"] == "timestamp_granularities[]" and info.value.status_code == 400


def test_streaming_events_as_the_sdk_types_them(client):
    with open(SPEECH_THEN_MUSIC, "rb") as f:
        events = list(client.audio.transcriptions.create(file=f, model="whisper-1", stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.done") == 1
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    segments = [e for e in events if e.type == "transcript.text.segment"]
    assert deltas and len(segments) >= len(deltas)
    assert isinstance(events[0], openai.types.audio.TranscriptionTextDeltaEvent)
    assert isinstance(segments[0], openai.types.audio.TranscriptionTextSegmentEvent)
    assert all(0 <= s.start <= s.end <= 36.1 for s in segments)
    assert [s.start for s in segments] == sorted(s.start for s in segments)
    done = events[-1]
    assert done.text == "".join(d.delta for d in deltas)  # deltas concatenate to the final text
    whole = _create(client, path=SPEECH_THEN_MUSIC)  # the stream transcribes what a plain call does
    assert words(done.text) == words(whole.text)


def test_streaming_errors_before_the_first_event_are_http_errors(client):
    with pytest.raises(openai.BadRequestError):
        list(client.audio.transcriptions.create(file=("x.wav", b"not audio"), model="whisper-1", stream=True))


# ---- policy per request --------------------------------------------------------------------------------


def test_suppress_leaves_text_srt_vtt_out_and_keeps_json_marked(client):
    kw = {"extra_body": {"guard_policy": "suppress", "guard_suppress_threshold": 0.0, "guard_flag_threshold": 0.0}}
    assert _create(client, response_format="text", **kw).strip() == ""
    assert _cues(_create(client, response_format="srt", **kw), ",") == []
    assert _cues(_create(client, response_format="vtt", **kw), ".") == []
    v = _create(client, response_format="verbose_json", **kw)
    assert v.text == "" and v.segments and all(s.model_extra["guard"]["verdict"] == "suppress" for s in v.segments)
    assert is_speech_text(" ".join(s.text for s in v.segments))  # kept, marked
    j = _create(client, **kw)
    assert j.text == "" and j.model_extra["guard"]["suppressed"] == len(j.model_extra["guard"]["marks"]) >= 1
    assert _create(client).text  # the server default (flag) is untouched by the previous requests


def test_policy_annotate_passes_everything(client):
    v = _create(client, path=NONSPEECH, response_format="verbose_json", extra_body={"guard_policy": "annotate"})
    assert v.model_extra["guard"]["policy"] == "annotate"
    assert all(s.model_extra["guard"]["verdict"] == "pass" for s in v.segments)


def test_bad_policy_is_a_400_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, extra_body={"guard_policy": "delete"})
    assert info.value.body["param"] == "guard_policy"


# ---- typed errors -----------------------------------------------------------------------------------------


def test_400_bad_audio_and_bad_fields(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(file=("clip.wav", b"RIFF....garbage"), model="whisper-1")
    assert "audio" in info.value.body["message"] and info.value.body["code"] == "invalid_audio"
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, response_format="mp3")
    assert info.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, temperature=3.0)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, extra_body={"no_such_field": "1"})
    assert "no_such_field" in info.value.body["message"]


def test_404_unknown_model_and_known_aliases(client, guard):
    with pytest.raises(openai.NotFoundError) as info:
        _create(client, model="whisper-large-v9")
    assert info.value.body["code"] == "model_not_found" and "tiny.en" in info.value.body["message"]
    for alias in ("whisper-1", "tiny.en", "Systran/faster-whisper-tiny.en",
                  str(guard.bundles["tiny.en"].resolved.path)):
        assert is_speech_text(_create(client, model=alias).text), alias
    assert [m.id for m in client.models.list()] == ["tiny.en"]
    assert client.models.retrieve("tiny.en").id == "tiny.en"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_401_missing_or_wrong_token(guard):
    with running_http(guard, auth_tokens=["tok-one-7f3a", "tok-two-c2e1"]) as srv:
        with pytest.raises(openai.AuthenticationError) as info:
            _create(sdk(srv, api_key="wrong"))
        assert info.value.body["code"] == "invalid_api_key" and "not accepted" in info.value.body["message"]
        assert info.value.response.headers["www-authenticate"].startswith("Bearer")
        assert is_speech_text(_create(sdk(srv, api_key="tok-two-c2e1")).text)
        r = httpx.get(srv.url + "/v1/models")
        assert r.status_code == 401 and "missing credentials" in r.json()["error"]["message"]
        assert httpx.get(srv.url + "/readyz").status_code == 200  # probes need no token
        assert sample_value(srv, "whisper_guard_requests_total", method="Transcribe", code="UNAUTHENTICATED") == 1


def test_413_declared_too_large_is_refused_before_the_body_is_read(guard):
    with running_http(guard, max_message_bytes=200_000) as srv:
        with pytest.raises(openai.APIStatusError) as info:
            sdk(srv).audio.transcriptions.create(file=("big.wav", wav_bytes(b"\0" * 300_000)), model="whisper-1")
        assert info.value.status_code == 413 and info.value.body["code"] == "request_too_large"
        # a chunked body (no Content-Length) is cut at the cap as it streams in
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                "Content-Type: audio/wav\r\n\r\n").encode()

        def body():
            yield head
            for _ in range(40):
                yield b"\0" * 16384
            yield f"\r\n--{boundary}--\r\n".encode()

        r = httpx.post(srv.url + "/v1/audio/transcriptions", content=body(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=60)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "request_too_large" and r.headers["x-request-id"]
        assert is_speech_text(_create(sdk(srv)).text)  # within the cap: served


def test_429_with_retry_after_when_every_place_is_taken(guard):
    with running_http(guard, max_concurrent=1, max_queued=0) as srv:
        client = sdk(srv)
        long = wav_bytes(pcm16(SPEECH_THEN_MUSIC))
        results = []
        t = threading.Thread(target=lambda: results.append(
            client.audio.transcriptions.create(file=("long.wav", long), model="whisper-1")))
        t.start()
        deadline = time.monotonic() + 60
        while srv.serving.admission.admitted == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as info:
            _create(client)
        assert info.value.response.headers["retry-after"] == "1" and info.value.body["code"] == "server_busy"
        t.join(120)
        assert results and "agent" in results[0].text.lower()
        assert sample_value(srv, "whisper_guard_rejected_total", method="Transcribe", reason="overload") == 1
        assert sample_value(srv, "whisper_guard_requests_total", method="Transcribe", code="RESOURCE_EXHAUSTED") == 1
        assert sample_value(srv, "whisper_guard_requests_total", method="Transcribe", code="OK") == 1


def test_504_when_the_request_timeout_passes(server):
    r = httpx.post(server.url + "/v1/audio/transcriptions", headers={"x-request-timeout": "0.3"}, timeout=120,
                   files={"file": ("long.wav", wav_bytes(pcm16(SPEECH_THEN_MUSIC)))})
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert server.serving.admission.admitted == 0


def test_415_for_a_body_that_is_not_multipart(server):
    r = httpx.post(server.url + "/v1/audio/transcriptions", json={"file": "x"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_paths_and_methods_are_openai_shaped(server):
    r = httpx.get(server.url + "/v1/audio/transcriptions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ---- verify -----------------------------------------------------------------------------------------------


def test_verify_plain_text_and_verbose_json_segments(server):
    url = server.url + "/v1/audio/verify"
    audio = SPEECH.read_bytes()
    r = httpx.post(url, files={"file": ("s.flac", audio)}, data={"transcript": SPEECH_TEXT}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "verify" and is_speech_text(body["text"])
    assert len(body["segments"]) == 1 and body["segments"][0]["guard"]["verdict"] == "pass"
    made_up = {"segments": [{"text": "That agent is already logged on.", "start": 0.0, "end": 2.5},
                            {"text": "Thanks for watching and subscribe to my channel!", "start": 2.5, "end": 5.5}]}
    r = httpx.post(url, files={"file": ("s.flac", audio)},
                   data={"transcript": json.dumps(made_up), "guard_policy": "annotate"}, timeout=120)
    assert r.status_code == 200, r.text
    segs = r.json()["segments"]
    assert [s["text"].strip() for s in segs] == [s["text"] for s in made_up["segments"]]
    assert segs[1]["guard"]["score"] > segs[0]["guard"]["score"]  # the made-up line scores worse
    r = httpx.post(url, files={"file": ("s.flac", audio)}, data={"transcript": '{"segments": [{"start": 1}]}'})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_transcript"
    r = httpx.post(url, files={"file": ("s.flac", audio)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "transcript"


# ---- curl ----------------------------------------------------------------------------------------------------


def _curl(*args: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=120)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def test_curl_multipart(server):
    url = server.url + "/v1/audio/transcriptions"
    code, body = _curl("-F", f"file=@{SPEECH}", "-F", "model=whisper-1", "-F", "response_format=text", url)
    assert code == 200 and is_speech_text(body)
    code, body = _curl("-F", f"file=@{SPEECH}", "-F", "response_format=verbose_json",
                       "-F", "timestamp_granularities[]=segment", url)
    assert code == 200 and json.loads(body)["segments"]
    code, body = _curl("-F", f"file=@{SPEECH}", "-F", "stream=true", url)
    assert code == 200
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "transcript.text.done" and is_speech_text(events[-1]["text"])
    code, body = _curl("-F", "model=whisper-1", url)
    assert code == 400 and json.loads(body)["error"]["param"] == "file"
    code, body = _curl("-d", "file=x", url)
    assert code == 415
    code, body = _curl(server.url + "/healthz")
    assert code == 200 and body.strip() == "ok"


# ---- lifecycle: loading and draining ------------------------------------------------------------------------


def test_503_while_loading_then_ready(guard):
    from guard.config import Settings
    from guard.metrics import GuardMetrics
    from guard.serving.core import Serving
    from guard.transports.http.server import HttpServer

    release = threading.Event()
    settings = Settings(http_address="127.0.0.1:0", metrics_address="")
    serving = Serving(settings, GuardMetrics())
    srv = HttpServer(settings, serving)
    serving.start(load=lambda s: (release.wait(60), guard)[1])
    srv.start()
    try:
        r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503 and "loading" in r.text
        with pytest.raises(openai.InternalServerError) as info:
            _create(sdk(srv))
        assert info.value.status_code == 503 and "loading" in info.value.body["message"]
        assert info.value.response.headers["retry-after"]
        release.set()
        assert serving.loaded.wait(30)
        assert httpx.get(srv.url + "/readyz").status_code == 200
        assert is_speech_text(_create(sdk(srv)).text)
    finally:
        release.set()
        srv.stop(0)


def test_drain_over_http_finishes_in_flight_and_refuses_new(guard):
    with running_http(guard, max_concurrent=1, max_queued=2) as srv:
        client = sdk(srv)
        results = []
        t = threading.Thread(target=lambda: results.append(_create(client, path=SPEECH_THEN_MUSIC)))
        t.start()
        deadline = time.monotonic() + 60
        while srv.serving.admission.running == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        drained = []
        d = threading.Thread(target=lambda: drained.append(srv.serving.drain(60)))
        d.start()
        while not srv.serving.admission.closed:
            time.sleep(0.01)
        assert httpx.get(srv.url + "/readyz").status_code == 503
        with pytest.raises(openai.InternalServerError) as info:
            _create(client)
        assert info.value.status_code == 503 and "shutting down" in info.value.body["message"]
        t.join(120)
        d.join(120)
        assert drained == [True] and results and "agent" in results[0].text.lower()


# ---- the README's examples ------------------------------------------------------------------------------


def _readme_http_section() -> str:
    from grpc_fixtures import REPO

    text = (REPO / "README.md").read_text()
    return text.split("<!-- section: http (owner: http) -->", 1)[1].split("<!-- /section -->", 1)[0]


def test_readme_sdk_snippet_and_curl_lines_run_against_a_real_server(server, capsys):
    import contextlib
    import io
    import os
    import shlex

    from grpc_fixtures import REPO

    section = _readme_http_section()
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'base_url="http://127.0.0.1:8000/v1"' in snippet
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out):
            exec(snippet.replace("http://127.0.0.1:8000", server.url), {})  # noqa: S102 - the README's own code
    finally:
        os.chdir(cwd)
    lines = out.getvalue().splitlines()
    assert lines and all(re.match(r"^\s*\d+\.\d\d-\s*\d+\.\d\d (pass|flag|suppress)\s+ ", ln) for ln in lines), lines
    assert is_speech_text(" ".join(ln.split(None, 2)[-1] for ln in lines))
    shell = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    curls = [ln.strip() for ln in shell.splitlines() if ln.strip().startswith("curl ")]
    assert len(curls) == 3
    for line in curls:
        argv = shlex.split(line.replace("http://127.0.0.1:8000", server.url))
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip(), (line, done.stderr)
        assert "error" not in done.stdout[:20], done.stdout[:300]


def test_http_calls_are_counted_like_grpc_calls(guard):
    with running_http(guard) as srv:
        client = sdk(srv)
        _create(client)
        with pytest.raises(openai.BadRequestError):
            client.audio.transcriptions.create(file=("x.wav", b"junk"), model="whisper-1")
        httpx.post(srv.url + "/v1/audio/verify", files={"file": ("s.flac", SPEECH.read_bytes())},
                   data={"transcript": SPEECH_TEXT}, timeout=120)
        assert sample_value(srv, "whisper_guard_requests_total", method="Transcribe", code="OK") == 1
        assert sample_value(srv, "whisper_guard_requests_total", method="Transcribe", code="INVALID_ARGUMENT") == 1
        assert sample_value(srv, "whisper_guard_requests_total", method="Verify", code="OK") == 1
        assert sample_value(srv, "whisper_guard_segments_total", model="tiny.en", verdict="pass") >= 2
        assert sample_value(srv, "whisper_guard_stage_duration_seconds_count", stage="decode") == 2
        assert sample_value(srv, "whisper_guard_audio_seconds_total", model="tiny.en") == pytest.approx(
            2 * SPEECH_SECONDS, abs=0.2)


def test_prompt_and_temperature_reach_the_decoder(client, guard):
    from guard.results import RequestOptions

    session = guard.open_stream(RequestOptions(prompt="  Agent log in. ", temperature=0.4))
    tokenizer = guard.bundle(None).transcriber.tokenizer("en")
    assert session.state.all_tokens == tokenizer.encode(" Agent log in.")  # faster-whisper's initial_prompt
    assert session.asr_options.temperatures == [0.4]
    assert guard.open_stream(RequestOptions()).asr_options.temperatures == list(guard.settings.temperatures)
    plain = _create(client, response_format="verbose_json")
    prompted = _create(client, response_format="verbose_json", prompt="Agent log in.")
    assert is_speech_text(prompted.text, min_ratio=0.7)
    hot = _create(client, response_format="verbose_json", temperature=0.7)
    assert all(s.temperature == pytest.approx(0.7) for s in hot.segments)
    assert all(s.temperature == 0.0 for s in plain.segments)


def test_a_client_that_goes_away_frees_its_place_and_stops_the_work(guard):
    """The client's connection closes mid-call (a unary call whose client times out, and a stream
    closed after its first event): the server sees the disconnect, the pipeline stops, the place
    is freed and the call counts as CANCELLED."""
    with running_http(guard, max_concurrent=1, max_queued=0) as srv:
        # ~290 s of audio: several seconds of work on any CPU, so the call is still running when the
        # client's 2 s timeout fires (72 s took ~2 s on a fast host and finished before it was cancelled)
        long = wav_bytes(pcm16(SPEECH_THEN_MUSIC) * 8)
        def freed(cancelled: int) -> None:
            deadline = time.monotonic() + 90
            while srv.serving.admission.admitted or sample_value(
                    srv, "whisper_guard_requests_total", method="Transcribe", code="CANCELLED") < cancelled:
                assert time.monotonic() < deadline, "a vanished client kept its place"
                time.sleep(0.05)

        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url + "/v1/audio/transcriptions", files={"file": ("long.wav", long)}, timeout=2.0)
        freed(1)
        with httpx.stream("POST", srv.url + "/v1/audio/transcriptions", files={"file": ("long.wav", long)},
                          data={"stream": "true"}, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # one event, then hang up
        freed(2)
        assert is_speech_text(_create(sdk(srv)).text)  # the place is free again

"""The multipart parser and the form fields fuzzed through the REAL HTTP server (hypothesis).

The contract: whatever a client sends (random field names and values, duplicated and missing
fields, invalid UTF-8, random and truncated multipart bodies, odd boundaries and headers, garbage
audio), the answer is an OpenAI-shaped error that blames the request (400, 404, 413, 415) or a
correct transcription (200); never a 5xx, never a traceback, always an `x-request-id` on calls
that reached an endpoint; the server keeps serving. Budgets are fixed and derandomized (about
250 requests, most refused before any inference); `WHISPER_GUARD_FUZZ_SCALE=20` runs 20x.
"""
from __future__ import annotations

import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpc_fixtures import FIXTURES, SPEECH
from http_fixtures import running_http

SCALE = int(os.environ.get("WHISPER_GUARD_FUZZ_SCALE", "1"))
TONE = (FIXTURES / "audio" / "tone.wav").read_bytes()
MAX_BODY = 256 * 1024
BLAMES_REQUEST = {200, 400, 404, 413, 415}
FIELDS = ["model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]", "stream",
          "guard_policy", "guard_flag_threshold", "guard_suppress_threshold", "transcript", "include[]", "file",
          "x" * 300, "", "ünï", "model\r\nX-Evil: 1"]
VALUES = st.one_of(
    st.sampled_from(["json", "text", "srt", "vtt", "verbose_json", "mp3", "segment", "word", "true", "false",
                     "0", "1", "-1", "nan", "inf", "1e309", "tiny.en", "whisper-1", "../../etc/passwd", "en", "xx",
                     "annotate", "flag", "suppress", "", " ", "{}", "[]", '{"segments": [{"text": "hi"}]}']),
    st.text(max_size=40),
    st.binary(max_size=40),
)


def budget(n: int):
    return settings(max_examples=n * SCALE, deadline=None, derandomize=SCALE == 1, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(guard):
    with running_http(guard, max_message_bytes=MAX_BODY, max_audio_seconds=8, max_concurrent=1,
                      max_queued=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def _check(r: httpx.Response, reached_endpoint: bool = True) -> None:
    assert r.status_code in BLAMES_REQUEST, (r.status_code, r.text[:300])
    if r.status_code != 200:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    if reached_endpoint and r.status_code not in (413,):
        assert r.headers.get("x-request-id"), r.headers


def _encode(value) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


@budget(80)
@given(fields=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), max_size=6),
       audio=st.sampled_from([None, b"", b"garbage", TONE, TONE[:200]]),
       path=st.sampled_from(["/v1/audio/transcriptions", "/v1/audio/verify"]))
def test_random_form_fields(http, fields, audio, path):
    boundary = "fuzzb0undary"
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode("utf-8", "replace")
                     + _encode(value) + b"\r\n")
    if audio is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                     f"Content-Type: audio/wav\r\n\r\n".encode() + audio + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    r = http.post(path, content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    _check(r)


@budget(80)
@given(body=st.binary(max_size=2048),
       content_type=st.sampled_from(["multipart/form-data; boundary=x", "multipart/form-data", "text/plain",
                                     "multipart/form-data; boundary=", "application/x-www-form-urlencoded",
                                     "multipart/form-data; boundary=" + "b" * 300, "", "multipart/mixed; boundary=x"]))
def test_random_bodies(http, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    _check(http.post("/v1/audio/transcriptions", content=body, headers=headers))


@budget(60)
@given(cut=st.integers(min_value=0, max_value=400), junk=st.binary(max_size=64))
def test_truncated_and_mangled_multipart(http, cut, junk):
    boundary = "cutb0undary"
    whole = (f'--{boundary}\r\nContent-Disposition: form-data; name="response_format"\r\n\r\ntext\r\n'
             f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.wav"\r\n\r\n').encode() \
        + TONE[:300] + f"\r\n--{boundary}--\r\n".encode()
    body = whole[:cut] + junk + whole[cut + len(junk):] if junk else whole[:len(whole) - cut]
    _check(http.post("/v1/audio/transcriptions", content=body,
                     headers={"content-type": f"multipart/form-data; boundary={boundary}"}))


def test_the_server_still_serves_after_the_fuzzing(http, server):
    r = http.post("/v1/audio/transcriptions", files={"file": ("s.flac", SPEECH.read_bytes())},
                  data={"response_format": "text"})
    assert r.status_code == 200 and "agent" in r.text.lower()
    assert server.serving.admission.admitted == 0
    assert server.serving.metrics.registry.get_sample_value(
        "whisper_guard_requests_total", {"method": "Transcribe", "code": "INTERNAL"}) in (None, 0.0)

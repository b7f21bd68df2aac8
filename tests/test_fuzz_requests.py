"""Request validation fuzzed through the REAL gRPC server (tiny.en on 127.0.0.1), plus short runs
of the coverage-guided harnesses for request validation and the model.bin reader.

The contract: whatever a client sends (absurd options, unknown enum values, model names that look
like paths, NaN/inf thresholds, invalid UTF-8, garbage or truncated protobuf bytes, zero-length and
oversized messages, streams in any order and any piece size), the call ends in a canonical status
that blames the request (INVALID_ARGUMENT, OUT_OF_RANGE, RESOURCE_EXHAUSTED for an oversized
message) or in a correct response; never INTERNAL/UNKNOWN, never a hang, never a traceback in
the message, always the request id in the trailing metadata. The server keeps serving.

Messages are sent as raw bytes over a generic channel call (no client-side serializer), so bytes the
Python protobuf encoder would refuse (invalid UTF-8 in `string` fields) reach the server.

Budgets are fixed and derandomized: about 700 requests against one warm server. Longer, random
runs: `WHISPER_GUARD_FUZZ_SCALE=20 python -m pytest tests/test_fuzz_requests.py` (20x the examples, a
new seed each run; README "Reliability and security" has the coverage-guided commands).
"""
from __future__ import annotations

import collections
import importlib.util
import io
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import is_speech_text
from grpc_fixtures import SPEECH, SPEECH_TEXT, pcm16, running_server, sample_value, wav_bytes
from guard.client import GuardClient
from guard.grpc_gen import guard_pb2 as pb
from guard.results import RequestOptions

HERE = Path(__file__).resolve().parent
MAX_MESSAGE = 1 << 20  # 1 MiB: oversized messages are cheap to make
MAX_AUDIO = 8.0
TIMEOUT = 60  # a hang becomes DEADLINE_EXCEEDED, which no case allows

SCALE = int(os.environ.get("WHISPER_GUARD_FUZZ_SCALE", "1"))


def budget(n: int):
    return settings(max_examples=n * SCALE, deadline=None, derandomize=SCALE == 1, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(guard):
    with running_server(guard, max_audio_seconds=MAX_AUDIO, stream_max_seconds=MAX_AUDIO,
                        max_message_bytes=MAX_MESSAGE, max_concurrent=1, max_queued=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20),
                                                        ("grpc.max_receive_message_length", 8 << 20)]) as ch:
        yield ch


def raw_unary(channel, method: str, data: bytes):
    """(code name, details, trailing metadata dict, response bytes or None) of a call with raw bytes."""
    call = channel.unary_unary(f"/whisperguard.v1.Guard/{method}")
    try:
        reply, info = call.with_call(data, timeout=TIMEOUT)
        return "OK", "", dict(info.trailing_metadata() or ()), reply
    except grpc.RpcError as e:
        return e.code().name, e.details() or "", dict(e.trailing_metadata() or ()), None


def raw_stream(channel, messages: list[bytes]):
    """(code, details, trailing metadata, [reply bytes]) of a StreamTranscribe fed raw messages."""
    call = channel.stream_stream("/whisperguard.v1.Guard/StreamTranscribe")(iter(messages), timeout=TIMEOUT)
    replies = []
    try:
        for r in call:
            replies.append(r)
        return "OK", "", dict(call.trailing_metadata() or ()), replies
    except grpc.RpcError as e:
        return e.code().name, e.details() or "", dict(e.trailing_metadata() or ()), replies


OUTCOMES: collections.Counter = collections.Counter()  # (method, code): the fuzzers reached both sides


def check_status(code: str, details: str, trailers: dict, size: int, allowed=("INVALID_ARGUMENT", "OUT_OF_RANGE"),
                 method: str = "?"):
    """The call blamed the request with a canonical code and an id, never the server."""
    OUTCOMES[method, code] += 1
    if size > MAX_MESSAGE:
        assert code == "RESOURCE_EXHAUSTED" and "larger than max" in details, (code, details)
        return
    assert code == "OK" or code in allowed, (code, details)
    assert "Traceback" not in details and 'File "' not in details, details
    assert trailers.get("x-request-id"), (code, details, trailers)


# ---- wire-format helpers (to write what the protobuf encoder refuses) ---------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string or sub-message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# ---- strategies ----------------------------------------------------------------------------------------

PATHISH = ["../../etc/passwd", "/etc/passwd", "/tmp", "~", ".", "..", "tiny.en/../../../etc", "./tiny.en",
           "file:///etc/passwd", "concat:/etc/passwd|/etc/hosts", "C:\\Windows\\win.ini", "tiny.en\x00.bin",
           "%2e%2e%2fetc%2fpasswd", str(HERE), "base", "small", "TINY.EN", " tiny.en"]
MODELS = st.one_of(st.just(""), st.just("tiny.en"), st.sampled_from(PATHISH), st.text(max_size=80),
                   st.text(min_size=65, max_size=3000))
LANGUAGES = st.one_of(st.just(""), st.just("en"), st.sampled_from(["x", "EN", "english", "zz", "fr", "en\x00", "ｅｎ",
                                                                   "../en", "en-US"]),
                      st.text(max_size=12), st.text(min_size=9, max_size=20000))
THRESHOLDS = st.one_of(st.none(), st.floats(0, 1), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([math.nan, math.inf, -math.inf, -0.0, -1e-300, 1 + 1e-15, 1e308]))
BEAMS = st.one_of(st.just(0), st.integers(1, 16), st.integers(17, 2**32 - 1))
POLICIES = st.one_of(st.integers(0, 3), st.integers(-(2**31), 2**31 - 1))


@st.composite
def absurd_options(draw) -> pb.Options:
    o = pb.Options(model=draw(MODELS), language=draw(LANGUAGES), beam_size=draw(BEAMS), policy=draw(POLICIES),
                   return_features=draw(st.booleans()))
    for name in ("flag_threshold", "suppress_threshold"):
        value = draw(THRESHOLDS)
        if value is not None:
            setattr(o, name, value)
    return o


@st.composite
def valid_options(draw) -> pb.Options:
    o = pb.Options(model=draw(st.sampled_from(["", "tiny.en"])), language=draw(st.sampled_from(["", "en"])),
                   beam_size=draw(st.sampled_from([0, 1, 2, 5])), policy=draw(st.integers(0, 3)),
                   return_features=draw(st.booleans()))
    for name in ("flag_threshold", "suppress_threshold"):
        value = draw(st.one_of(st.none(), st.floats(0, 1)))
        if value is not None:
            setattr(o, name, value)
    return o


OPTIONS = st.one_of(absurd_options(), valid_options())


def options_in_range(o: pb.Options) -> bool:
    """Do the options pass the request-level checks (enum values, pydantic ranges and lengths)?"""
    if not 0 <= o.policy <= 3:
        return False
    try:
        RequestOptions(**{k: v for k, v in {
            "model": o.model or None, "language": o.language or None, "beam_size": o.beam_size or None,
            "flag_threshold": o.flag_threshold if o.HasField("flag_threshold") else None,
            "suppress_threshold": o.suppress_threshold if o.HasField("suppress_threshold") else None}.items()})
    except Exception:  # noqa: BLE001
        return False
    return True


def options_valid(o: pb.Options) -> bool:
    """Would the server accept these options for tiny.en (ranges, and what the model serves)?"""
    return options_in_range(o) and o.model in ("", "tiny.en") and o.language in ("", "en")


NOISE = (np.random.default_rng(0).normal(0, 0.05, 16000) * 32767).astype("<i2").tobytes()  # 1 s
SEEDS = {p.name: p.read_bytes() for p in sorted((HERE / "fixtures" / "audio").glob("tone.*"))}


def _lying_wav() -> bytes:
    """A WAV whose header declares ~37 hours of 16 kHz audio, with 0.1 s of it present (FFmpeg reads a
    near-2^32 data size as "unknown" and decodes what is there)."""
    head = wav_bytes(b"\0\0" * 1600)
    return head[:4] + struct.pack("<I", 0xFFFFFFF0) + head[8:40] + struct.pack("<I", 0xFFFFFFE0) + head[44:]


def _silent_flac(seconds: int, rate: int = 8000) -> bytes:
    """Digital silence in FLAC with 65535-sample blocks: an hour in ~14 KB (a decompression bomb)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono", options={"frame_size": "65535"})
        stream.codec_context.format = "s16"
        zeros = np.zeros((1, 65535), np.int16)
        pts, n = 0, rate * seconds
        while pts < n:
            frame = av.AudioFrame.from_ndarray(zeros[:, :min(65535, n - pts)], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, pts
            pts += frame.samples
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _unknown_length(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field zeroed ("unknown"): only decoding can tell."""
    b = bytearray(flac)
    v = int.from_bytes(b[18:26], "big")
    b[18:26] = (v & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(b)


BOMB = _silent_flac(3600)
BOMB_UNKNOWN = _unknown_length(BOMB)


@st.composite
def audio(draw):
    """(kind, RawPcm | bytes | None, valid): the `oneof audio` of a Transcribe/Verify request."""
    kind = draw(st.sampled_from(["none", "garbage", "seed", "truncated", "pcm", "bomb", "bomb unknown", "lying wav",
                                 "valid", "valid", "over cap", "zero"]))
    if kind == "none":
        return kind, None, False
    if kind == "garbage":
        return kind, draw(st.binary(max_size=2048)), False
    if kind == "seed":
        return kind, SEEDS[draw(st.sampled_from(sorted(SEEDS)))], None  # valid files, maybe a hallucination
    if kind == "truncated":
        data = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
        return kind, data[:draw(st.integers(0, len(data) - 1))], None
    if kind == "bomb":
        return kind, BOMB, False
    if kind == "bomb unknown":
        return kind, BOMB_UNKNOWN, False
    if kind == "lying wav":
        return kind, _lying_wav(), None
    if kind == "zero":
        return kind, b"", False
    if kind == "over cap":
        return kind, pb.RawPcm(data=b"\0\0" * int(16000 * (MAX_AUDIO + 1)), sample_rate=16000), False
    if kind == "valid":
        n = draw(st.integers(800, 16000)) * 2
        return kind, pb.RawPcm(data=NOISE[:n], sample_rate=16000), True
    rate = draw(st.one_of(st.sampled_from([0, 1, 3999, 4000, 8000, 16000, 44100, 384000, 384001, 2**32 - 1]),
                          st.integers(0, 2**32 - 1)))
    channels = draw(st.one_of(st.sampled_from([0, 1, 2, 32, 33, 2**32 - 1]), st.integers(0, 2**32 - 1)))
    return kind, pb.RawPcm(data=draw(st.binary(max_size=4000)), sample_rate=rate, channels=channels), None


def with_audio(message, value):
    if isinstance(value, pb.RawPcm):
        message.pcm.CopyFrom(value)
    elif value is not None:
        message.encoded = value
    return message


def thresholds(server, o: pb.Options) -> tuple[float, float]:
    calibrated = server.service.guard.bundle(None).calibration.thresholds
    return (o.flag_threshold if o.HasField("flag_threshold") else calibrated["flag"],
            o.suppress_threshold if o.HasField("suppress_threshold") else calibrated["suppress"])


def check_segments(server, o: pb.Options, segments, text: str) -> None:
    """A correct reply: scores in [0, 1], verdicts as the policy says, text = kept segments."""
    flag_t, sup_t = thresholds(server, o)
    mode = o.policy or pb.POLICY_MODE_FLAG  # the session Guard's default policy
    for s in segments:
        assert 0.0 <= s.score <= 1.0 and s.start_seconds <= s.end_seconds
        if mode == pb.POLICY_MODE_ANNOTATE:
            expected = pb.VERDICT_PASS
        elif mode == pb.POLICY_MODE_SUPPRESS and s.score >= sup_t:
            expected = pb.VERDICT_SUPPRESS
        else:
            expected = pb.VERDICT_FLAG if s.score >= flag_t else pb.VERDICT_PASS
        assert s.verdict == expected, (mode, s.score, flag_t, sup_t, s.verdict)
        assert bool(s.features) == bool(o.return_features)
    assert all(s.text == s.text.strip() for s in segments)  # no leading space (Whisper's is stripped)
    assert text == " ".join(s.text for s in segments if s.verdict != pb.VERDICT_SUPPRESS and s.text)


# ---- Transcribe ------------------------------------------------------------------------------------------


@budget(200)
@given(OPTIONS, audio())
def test_transcribe_any_options_and_audio(server, channel, options, audio_case):
    kind, value, valid_audio = audio_case
    request = with_audio(pb.TranscribeRequest(options=options), value)
    data = request.SerializeToString()
    t0 = time.monotonic()
    code, details, trailers, reply = raw_unary(channel, "Transcribe", data)
    elapsed = time.monotonic() - t0
    check_status(code, details, trailers, len(data), method="Transcribe")
    if not options_in_range(options):  # checked before anything else
        assert code == "INVALID_ARGUMENT" and "options." in details, (options, details)
    elif not options_valid(options):  # model and language are checked once the audio is decoded
        assert code in ("INVALID_ARGUMENT", "OUT_OF_RANGE"), (code, details)
        if valid_audio:
            assert "model" in details or "language" in details, details
    elif kind in ("none", "garbage", "zero"):
        assert code == "INVALID_ARGUMENT", (kind, code, details)
    elif kind == "bomb":  # an hour in 14 KB: refused on its header
        assert code == "OUT_OF_RANGE" and "declares 3600.00 s" in details and elapsed < 5, (details, elapsed)
    elif kind == "bomb unknown":  # no usable header: decoding stops just past the cap
        assert code == "OUT_OF_RANGE" and f"longer than the {MAX_AUDIO:g} s limit" in details and elapsed < 5, \
            (details, elapsed)
    elif kind == "over cap":
        assert code == "OUT_OF_RANGE" and f"limit is {MAX_AUDIO:g} s" in details, details
    elif valid_audio:
        assert code == "OK", (code, details)
    if code == "OK":
        response = pb.TranscribeResponse.FromString(reply)
        assert response.request_id == trailers["x-request-id"]
        assert response.summary.model == "tiny.en" and 0 < response.summary.audio_seconds <= MAX_AUDIO + 0.01
        check_segments(server, options, response.segments, response.text)


# ---- Verify ----------------------------------------------------------------------------------------------

TEXTS = st.one_of(
    st.sampled_from(["Thanks for watching!", "hello", " ", "", "<|endoftext|>", "<|notimestamps|><|0.00|>",
                     "<|startoftranscript|>", "\x00\x01\x02", "\u202eevil", "🎵🎵🎵", "a" * 4000, "a" * 4001,
                     "word " * 400, "\n\t", "ﷺ" * 50]),
    st.text(max_size=60), st.text(min_size=3000, max_size=6000))
TIMES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 2),
                  st.sampled_from([0.0, -0.0, -1.0, 1e308, math.nan, math.inf]))


PLAUSIBLE = ["hello there", "Thanks for watching!", "That agent is already logged on.", "Please enter your number"]


@st.composite
def plausible_transcript(draw) -> list[pb.TranscriptSegment]:
    """What a real ASR would send for a short clip: untimed, or timed inside the first second."""
    texts = draw(st.lists(st.sampled_from(PLAUSIBLE), min_size=1, max_size=3))
    if draw(st.booleans()):
        return [pb.TranscriptSegment(text=t) for t in texts]
    bounds = sorted(draw(st.lists(st.floats(0, 1.0), min_size=len(texts) + 1, max_size=len(texts) + 1, unique=True)))
    return [pb.TranscriptSegment(text=t, start_seconds=a, end_seconds=b) for t, a, b in zip(texts, bounds, bounds[1:])]


@st.composite
def transcript(draw) -> list[pb.TranscriptSegment]:
    segments = []
    for _ in range(draw(st.integers(0, 5))):
        seg = pb.TranscriptSegment(text=draw(TEXTS))
        for name in ("start_seconds", "end_seconds"):
            value = draw(TIMES)
            if value is not None:
                setattr(seg, name, value)
        segments.append(seg)
    return segments


@budget(150)
@given(OPTIONS, audio(), st.one_of(transcript(), plausible_transcript()))
def test_verify_any_transcript_options_and_audio(server, channel, options, audio_case, segments):
    kind, value, valid_audio = audio_case
    request = with_audio(pb.VerifyRequest(options=options, transcript=segments), value)
    data = request.SerializeToString()
    code, details, trailers, reply = raw_unary(channel, "Verify", data)
    check_status(code, details, trailers, len(data), method="Verify")
    if not segments or not options_valid(options) or kind in ("none", "garbage", "bomb", "bomb unknown", "zero",
                                                              "over cap"):
        assert code != "OK", (code, segments, options, kind)
    elif valid_audio and all(s.text in PLAUSIBLE for s in segments):
        assert code == "OK", (code, details, segments)
    if code == "OK":
        response = pb.VerifyResponse.FromString(reply)
        assert len(response.segments) == len(segments)
        timed = segments[0].HasField("start_seconds")
        ordered = sorted(segments, key=lambda s: s.start_seconds) if timed else segments
        assert [s.text for s in response.segments] == [s.text.strip() for s in ordered]
        check_segments(server, options, response.segments, response.text)


# ---- StreamTranscribe --------------------------------------------------------------------------------------


@st.composite
def stream_messages(draw) -> tuple[list[bytes], str]:
    """Raw AudioChunk messages: a config (maybe absurd, maybe missing, maybe repeated), PCM pieces of
    any size (odd ones too), garbage bytes, empty messages."""
    kind = draw(st.sampled_from(["good", "good", "absurd config", "no config", "garbage", "config twice",
                                 "odd end", "over cap"]))
    rate = 16000 if kind != "absurd config" else draw(st.one_of(st.integers(0, 2**32 - 1),
                                                                st.sampled_from([0, 1, 3999, 384001])))
    channels = 1 if kind != "absurd config" else draw(st.one_of(st.integers(0, 40), st.just(2**32 - 1)))
    options = draw(valid_options()) if kind != "absurd config" else draw(OPTIONS)
    config = pb.AudioChunk(config=pb.StreamConfig(sample_rate=rate, channels=channels, options=options))
    total = draw(st.integers(1, 8000)) * 2 * (1 if kind != "absurd config" else max(1, min(channels, 8)))
    pcm = NOISE[:total] if total <= len(NOISE) else NOISE + b"\0" * (total - len(NOISE))
    cuts = sorted(draw(st.lists(st.integers(0, len(pcm)), max_size=8)))
    pieces = [pcm[a:b] for a, b in zip([0, *cuts], [*cuts, len(pcm)])]
    messages = [pb.AudioChunk(pcm16=p).SerializeToString() for p in pieces]
    if kind == "odd end":
        messages.append(pb.AudioChunk(pcm16=b"\x01").SerializeToString())
    if kind == "over cap":
        messages.append(pb.AudioChunk(pcm16=b"\0\0" * int(16000 * MAX_AUDIO)).SerializeToString())
    if kind == "garbage":
        messages.insert(draw(st.integers(0, len(messages))), draw(st.binary(min_size=1, max_size=64)) + b"\xff\xff")
    if kind == "config twice":
        messages.insert(draw(st.integers(0, len(messages))), config.SerializeToString())
    if kind != "no config":
        messages.insert(0, config.SerializeToString())
    return messages, kind


@budget(60)
@given(stream_messages())
def test_stream_any_sequence_of_chunks(server, channel, case):
    messages, kind = case
    code, details, trailers, replies = raw_stream(channel, messages)
    check_status(code, details, trailers, max(map(len, messages), default=0), method="StreamTranscribe")
    if kind in ("no config", "config twice", "odd end", "over cap", "garbage"):
        assert code != "OK", (kind, details)
    if kind == "good":
        assert code == "OK", details
    events = [pb.SegmentEvent.FromString(r) for r in replies]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "a gap or repeat in `sequence`"
    assert all(e.request_id == trailers["x-request-id"] for e in events)
    if code == "OK":
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[-1] == "summary" and kinds.count("summary") == 1, kinds
        assert events[-1].summary.summary.segments == len(events) - 1


# ---- raw bytes: garbage, truncated messages, invalid UTF-8 -------------------------------------------------

METHODS = ("Transcribe", "Verify")
BAD_UTF8 = st.one_of(st.sampled_from([b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80",
                                      b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80"]),
                     st.binary(min_size=1, max_size=8).map(lambda b: b + b"\xff"))


@st.composite
def invalid_utf8(draw) -> bytes:
    head, tail = draw(st.text(max_size=20)).encode(), draw(st.text(max_size=20)).encode()
    return head + draw(BAD_UTF8) + tail


FLAC = SPEECH.read_bytes()[:2000]


@budget(100)
@given(st.sampled_from(["verify text", "transcribe model", "transcribe language", "verify model", "stream language",
                        "stream model"]), invalid_utf8())
def test_invalid_utf8_in_any_string_field_is_invalid_argument(server, channel, where, bad):
    if where == "verify text":
        data = field(1, FLAC) + field(3, field(1, bad))
    elif where.endswith("model") or where.endswith("language"):
        options = field(1 if where.endswith("model") else 2, bad)
        if where.startswith("transcribe"):
            data = field(1, FLAC) + field(3, options)
        elif where.startswith("verify"):
            data = field(1, FLAC) + field(3, field(1, b"hello")) + field(4, options)
        else:
            config = field(1, field(1, options) + _varint(2 << 3) + _varint(16000))  # config{options, sample_rate}
            code, details, trailers, replies = raw_stream(channel, [config, pb.AudioChunk(pcm16=NOISE[:3200])
                                                                    .SerializeToString()])
            assert code == "INVALID_ARGUMENT" and "not a valid whisperguard.v1.AudioChunk" in details, details
            assert trailers.get("x-request-id") and not replies
            return
    method = "Verify" if where.startswith("verify") else "Transcribe"
    code, details, trailers, _ = raw_unary(channel, method, data)
    assert code == "INVALID_ARGUMENT", (code, details)
    assert f"not a valid whisperguard.v1.{method}Request" in details, details
    assert trailers.get("x-request-id")


@budget(150)
@given(st.sampled_from(METHODS), st.one_of(st.binary(max_size=600), st.binary(max_size=64).map(lambda b: b * 7)))
def test_random_bytes_as_a_request(server, channel, method, data):
    code, details, trailers, reply = raw_unary(channel, method, data)
    check_status(code, details, trailers, len(data))


@budget(60)
@given(st.sampled_from(METHODS), st.data())
def test_truncated_valid_requests(server, channel, method, data):
    if method == "Transcribe":
        message = pb.TranscribeRequest(encoded=FLAC, options=pb.Options(model="tiny.en", language="en"))
    else:
        message = pb.VerifyRequest(encoded=FLAC, transcript=[pb.TranscriptSegment(text="hello", start_seconds=0,
                                                                                  end_seconds=1)])
    raw = message.SerializeToString()
    cut = data.draw(st.integers(0, len(raw) - 1))
    code, details, trailers, _ = raw_unary(channel, method, raw[:cut])
    check_status(code, details, trailers, cut)
    assert code != "OK"


@pytest.mark.parametrize("method", ["Transcribe", "Verify", "StreamTranscribe"])
def test_zero_length_and_oversized_messages(server, channel, method):
    small, huge = b"", field(1, b"\0" * (MAX_MESSAGE + 1))
    for data, expected in ((small, "INVALID_ARGUMENT"), (huge, "RESOURCE_EXHAUSTED")):
        if method == "StreamTranscribe":
            code, details, _, _ = raw_stream(channel, [data])
        else:
            code, details, _, _ = raw_unary(channel, method, data)
        assert code == expected, (method, len(data), code, details)


def test_server_is_unharmed(server):
    """After everything above: nothing held, nothing INTERNAL/UNKNOWN, a real request still right; and
    the fuzzers reached both sides of every method (valid requests answered, bad ones refused)."""
    if OUTCOMES:  # the property tests ran in this session (not deselected)
        for method in ("Transcribe", "Verify", "StreamTranscribe"):
            assert OUTCOMES[method, "OK"] >= 3 and OUTCOMES[method, "INVALID_ARGUMENT"] >= 10, OUTCOMES
        assert OUTCOMES["Transcribe", "OUT_OF_RANGE"] >= 3, OUTCOMES
        assert OUTCOMES["StreamTranscribe", "OUT_OF_RANGE"] >= 1, OUTCOMES
    assert server.admission.admitted == 0 and server.admission.running == 0
    for method in ("Transcribe", "Verify", "StreamTranscribe"):
        for code in ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED", "CANCELLED", "UNAVAILABLE"):
            # the one oversized stream message above: gRPC cancels that call under the servicer, which
            # counts it CANCELLED (the client sees RESOURCE_EXHAUSTED)
            allowed = 1 if (method, code) == ("StreamTranscribe", "CANCELLED") else 0
            assert sample_value(server, "whisper_guard_requests_total", method=method, code=code) <= allowed, \
                (method, code)
    assert sample_value(server, "whisper_guard_requests_total", method="Transcribe", code="INVALID_ARGUMENT") > 50
    with GuardClient(server.address, timeout=60) as c:
        assert c.health() == "SERVING"
        assert is_speech_text(c.transcribe(SPEECH).text)
        assert is_speech_text(c.transcribe(pcm16(SPEECH), sample_rate=16000).text)


# ---- coverage-guided harnesses: short runs ------------------------------------------------------------------

needs_atheris = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                   reason="atheris is not installed (pip install atheris; see tests/fuzz/README.md)")


def _atheris(script: str, corpus: Path, tmp_path: Path, runs: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    subprocess.run([sys.executable, str(HERE / "fuzz" / script), "--write-seeds", str(corpus)], env=env, check=True,
                   timeout=120)
    assert len(list(corpus.iterdir())) >= 5
    proc = subprocess.run(
        [sys.executable, str(HERE / "fuzz" / script), f"-atheris_runs={runs}", "-seed=1", "-timeout=30",
         "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/", str(corpus)],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Done {runs}" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))


@needs_atheris
def test_atheris_request_validation_short_run(tmp_path):
    """3,000 coverage-guided executions of the request-validation harness (no model)."""
    _atheris("fuzz_requests.py", tmp_path / "corpus", tmp_path, 3000)


@needs_atheris
def test_atheris_model_bin_reader_short_run(tmp_path):
    """5,000 coverage-guided executions of the model.bin reader harness."""
    _atheris("fuzz_ct2_reader.py", tmp_path / "corpus", tmp_path, 5000)

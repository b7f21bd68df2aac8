"""Every RPC end to end: a real server on 127.0.0.1 around the real model, real clients."""
from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import is_speech_text
from grpc_fixtures import (
    NONSPEECH, SPEECH, SPEECH_TEXT, SPEECH_THEN_MUSIC, pcm16, rpc_error, running_server, sample_value, seconds_of,
    wav_bytes,
)
from guard import client as guard_client
from guard.client import AsyncGuardClient, GuardClient, StreamIntegrityError, pcm16_chunks
from guard.grpc_gen import guard_pb2 as pb

MAX_AUDIO = 40.0  # SPEECH_THEN_MUSIC (36 s) fits, 41 s does not
MAX_MESSAGE = 2_000_000
SPEECH_WORDS = ("agent", "already", "logged", "number", "pound key")


def words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


@pytest.fixture(scope="module")
def server(guard):
    with running_server(guard, max_audio_seconds=MAX_AUDIO, stream_max_seconds=MAX_AUDIO,
                        max_message_bytes=MAX_MESSAGE) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with GuardClient(server.address, timeout=120) as c:
        yield c


# ---- health and reflection ----------------------------------------------------------------------


def test_health_reports_serving_for_server_and_service(client):
    assert client.health() == "SERVING"
    assert client.health("whisperguard.v1.Guard") == "SERVING"


def test_reflection_describes_the_api_like_grpcurl(server):
    with grpc.insecure_channel(server.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert {"whisperguard.v1.Guard", "grpc.health.v1.Health"} <= set(db.get_services())
        pool = descriptor_pool.DescriptorPool(db)
        service = pool.FindServiceByName("whisperguard.v1.Guard")
        methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
        assert methods == {
            "Transcribe": ("whisperguard.v1.TranscribeRequest", "whisperguard.v1.TranscribeResponse"),
            "StreamTranscribe": ("whisperguard.v1.AudioChunk", "whisperguard.v1.SegmentEvent"),
            "Verify": ("whisperguard.v1.VerifyRequest", "whisperguard.v1.VerifyResponse"),
        }
        seg = pool.FindMessageTypeByName("whisperguard.v1.Segment")
        assert {"start_seconds", "end_seconds", "text", "score", "verdict", "reasons", "features"} <= set(
            seg.fields_by_name)


# ---- Transcribe ---------------------------------------------------------------------------------


def test_transcribe_speech_passes_with_scores_reasons_and_summary(client):
    reply = client.transcribe(SPEECH, return_features=True)
    assert reply.request_id
    assert all(w in words(reply.text) for w in SPEECH_WORDS), reply.text
    assert reply.segments
    for seg in reply.segments:
        assert 0.0 <= seg.score <= 1.0
        assert seg.verdict == pb.VERDICT_PASS, (seg.text, seg.score)
        # times never run past the audio (the ends are clamped: Whisper writes up to 6.00 s here)
        assert 0.0 <= seg.start_seconds < seg.end_seconds <= reply.summary.audio_seconds
        assert seg.features, "return_features asked for the signature"
    s = reply.summary
    assert s.model == "tiny.en" and s.language == "en" and s.policy == pb.POLICY_MODE_FLAG
    assert s.audio_seconds == pytest.approx(5.516, abs=0.01)
    assert {t.stage for t in s.timings} >= {"decode", "transcribe", "probe", "score"}
    assert s.segments == len(reply.segments) and s.flagged == s.suppressed == 0
    assert s.processing_seconds > 0


def test_transcribe_features_only_when_asked(client):
    reply = client.transcribe(SPEECH)
    assert reply.segments and not any(seg.features for seg in reply.segments)


@pytest.mark.parametrize("policy, verdict", [("annotate", pb.VERDICT_PASS), ("flag", pb.VERDICT_FLAG),
                                             ("suppress", pb.VERDICT_SUPPRESS)])
def test_transcribe_nonspeech_hallucination_per_policy(client, policy, verdict):
    """tiny.en invents a sentence over bubbling water; the calibrated score catches it."""
    reply = client.transcribe(NONSPEECH, policy=policy)
    assert reply.segments, "tiny.en is expected to hallucinate on this clip"
    hallucinated = max(reply.segments, key=lambda s: s.score)
    assert hallucinated.text.strip(), "the segment keeps its text in every mode"
    assert hallucinated.verdict == verdict, (hallucinated.text, hallucinated.score)
    if policy == "suppress":
        assert hallucinated.text.strip() not in reply.text
        assert reply.summary.suppressed >= 1
    else:  # never silently lost: annotate and flag keep it in the text too
        assert hallucinated.text.strip() in reply.text
    assert reply.summary.policy == {"annotate": pb.POLICY_MODE_ANNOTATE, "flag": pb.POLICY_MODE_FLAG,
                                    "suppress": pb.POLICY_MODE_SUPPRESS}[policy]


def test_transcribe_request_thresholds_drive_the_verdict(client):
    reply = client.transcribe(SPEECH, policy="suppress", flag_threshold=0.0, suppress_threshold=0.0)
    assert reply.segments and all(s.verdict == pb.VERDICT_SUPPRESS for s in reply.segments)
    assert reply.text == "" and reply.summary.suppressed == len(reply.segments)
    assert all(s.text.strip() for s in reply.segments)


def test_transcribe_raw_pcm_matches_the_encoded_file(client):
    encoded = client.transcribe(SPEECH)
    raw = client.transcribe(pcm16(SPEECH), sample_rate=16000)
    assert words(raw.text) == words(encoded.text)


def test_client_request_id_is_echoed(client):
    assert client.transcribe(SPEECH, request_id="trace-42").request_id == "trace-42"


# ---- Verify -------------------------------------------------------------------------------------


def test_verify_speech_with_its_true_transcript_passes(client):
    reply = client.verify(SPEECH, [("That agent is already logged on.", 0.0, 2.3),
                                   ("Please enter your agent number followed by the pound key.", 2.3, 5.4)])
    assert [s.text.strip() for s in reply.segments] == ["That agent is already logged on.",
                                                        "Please enter your agent number followed by the pound key."]
    assert all(s.verdict == pb.VERDICT_PASS for s in reply.segments), [s.score for s in reply.segments]
    assert reply.segments[0].start_seconds == pytest.approx(0.0) and reply.segments[1].end_seconds == pytest.approx(5.4)
    assert reply.request_id and reply.summary.segments == 2


def test_verify_nonspeech_with_an_invented_transcript_is_flagged(client):
    speech = client.verify(SPEECH, ["That agent is already logged on. Please enter your agent number "
                                    "followed by the pound key."], policy="flag")
    invented = client.verify(NONSPEECH, ["Thank you for watching!"], policy="flag")
    assert invented.segments[0].score > speech.segments[0].score
    assert invented.segments[0].verdict == pb.VERDICT_FLAG, invented.segments[0].score
    assert invented.text.strip() == "Thank you for watching!"  # flag keeps the text


# ---- StreamTranscribe ---------------------------------------------------------------------------


def _unary_pcm(client, pcm: bytes) -> pb.TranscribeResponse:
    return client.transcribe(pcm, sample_rate=16000)


@pytest.fixture(scope="module")
def unary_long(client):
    return _unary_pcm(client, pcm16(SPEECH_THEN_MUSIC))


def test_stream_emits_segments_before_the_stream_ends(server, unary_long):
    """Send 31 s, hold the rest back until the first window's segments arrive (they must)."""
    pcm = pcm16(SPEECH_THEN_MUSIC)
    split = 31 * 16000 * 2
    first_segment = threading.Event()

    def chunks():
        yield from pcm16_chunks(pcm[:split], chunk_seconds=0.02)  # 20 ms pieces
        assert first_segment.wait(60), "no segment arrived although 31 s of audio were sent"
        yield from pcm16_chunks(pcm[split:], chunk_seconds=0.02)

    events = []
    with GuardClient(server.address, timeout=120) as c:
        for event in c.stream(chunks(), sample_rate=16000):
            events.append(event)
            if event.WhichOneof("event") == "segment":
                first_segment.set()
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.WhichOneof("event") for e in events][-1] == "summary"
    assert all(e.request_id == events[0].request_id for e in events)
    segments = [e.segment for e in events[:-1]]
    assert [s.text for s in segments] == [s.text for s in unary_long.segments]
    assert [s.verdict for s in segments] == [s.verdict for s in unary_long.segments]
    summary = events[-1].summary
    assert words(summary.text) == words(unary_long.text)
    assert summary.summary.audio_seconds == pytest.approx(seconds_of(pcm))
    assert summary.summary.segments == len(segments)


@pytest.mark.parametrize("step", [320_000, 39_505], ids=["10s", "1.23s-odd-bytes"])
def test_stream_chunk_size_does_not_change_the_transcript(client, unary_long, step):
    """10 s pieces, and odd-sized pieces that split samples across messages, give the unary result."""
    pcm = pcm16(SPEECH_THEN_MUSIC)
    events = list(client.stream((pcm[i:i + step] for i in range(0, len(pcm), step)), sample_rate=16000))
    segments = [e.segment for e in events if e.WhichOneof("event") == "segment"]
    assert [(s.text, s.verdict) for s in segments] == [(s.text, s.verdict) for s in unary_long.segments]
    assert [round(s.score, 6) for s in segments] == [round(s.score, 6) for s in unary_long.segments]
    assert words(events[-1].summary.text) == words(unary_long.text)


def test_stream_short_speech_and_nonspeech(client):
    speech = list(client.stream(pcm16_chunks(pcm16(SPEECH), chunk_seconds=0.5), sample_rate=16000))
    assert all(w in words(speech[-1].summary.text) for w in SPEECH_WORDS)
    noise = list(client.stream(pcm16_chunks(pcm16(NONSPEECH), chunk_seconds=0.5), sample_rate=16000,
                               policy="suppress"))
    segs = [e.segment for e in noise if e.WhichOneof("event") == "segment"]
    assert segs and max(segs, key=lambda s: s.score).verdict == pb.VERDICT_SUPPRESS
    assert noise[-1].summary.summary.suppressed >= 1


def test_stream_pcm_at_other_rates_is_chunk_invariant():
    """44.1 kHz stereo in any piece size gives the same 16 kHz samples, close to the unary path."""
    import numpy as np

    from guard import audio
    from guard.intake import PcmStream

    t = np.arange(44100 * 2) / 44100
    x = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] * np.array([1.0, 0.5])
    data = (x * 32767).astype("<i2").tobytes()

    def run(step):
        stream = PcmStream(44100, 2, max_seconds=60)
        return np.concatenate([stream.push(data[i:i + step]) for i in range(0, len(data), step)] + [stream.flush()])

    whole, pieces = run(len(data)), run(1763)  # 1763: odd, splits frames and samples
    assert np.array_equal(whole, pieces) and len(whole) == 32000
    assert np.allclose(whole, audio.from_pcm16(data, 44100, channels=2, max_seconds=60), atol=2e-3)


def test_stream_sequence_check_catches_loss():
    seq = guard_client._Sequence()
    seq.check(pb.SegmentEvent(sequence=1))
    with pytest.raises(StreamIntegrityError):
        seq.check(pb.SegmentEvent(sequence=3))


def test_async_client_all_three_rpcs(server):
    async def main():
        async with AsyncGuardClient(server.address, timeout=120) as c:
            assert await c.health() == "SERVING"
            t = await c.transcribe(SPEECH)
            v = await c.verify(SPEECH, [SPEECH_TEXT])
            events = [e async for e in c.stream(pcm16_chunks(pcm16(SPEECH)), sample_rate=16000)]
            return t, v, events

    t, v, events = asyncio.run(main())
    assert is_speech_text(t.text)
    assert v.segments[0].text.strip() == SPEECH_TEXT and v.segments[0].verdict == pb.VERDICT_PASS
    assert is_speech_text(events[-1].summary.text)


# ---- bad input: every case maps to its code and an actionable message ------------------------------


def _transcribe(stub, **fields):
    return lambda: stub.Transcribe(pb.TranscribeRequest(**fields), timeout=30)


def _verify(stub, transcript, **fields):
    segs = guard_client.transcript_segments(transcript)
    return lambda: stub.Verify(pb.VerifyRequest(encoded=SPEECH.read_bytes(), transcript=segs, **fields), timeout=30)


def _stream(stub, messages):
    return lambda: list(stub.StreamTranscribe(iter(messages), timeout=30))


def _cfg(rate=16000, **options):
    return pb.AudioChunk(config=pb.StreamConfig(sample_rate=rate, options=pb.Options(**options)))


FLAC = SPEECH.read_bytes()
BAD_INPUTS = {
    # case: (call builder, expected code, words the message must contain)
    "no audio": (lambda s: _transcribe(s), "INVALID_ARGUMENT", "no audio"),
    "empty file": (lambda s: _transcribe(s, encoded=b""), "INVALID_ARGUMENT", "empty audio"),
    "corrupt file": (lambda s: _transcribe(s, encoded=b"\x00garbage" * 500), "INVALID_ARGUMENT", "not a readable audio"),
    "truncated flac": (lambda s: _transcribe(s, encoded=FLAC[:len(FLAC) // 2]), "INVALID_ARGUMENT", "truncated"),
    "pcm without rate": (lambda s: _transcribe(s, pcm=pb.RawPcm(data=b"\0\0" * 100)), "INVALID_ARGUMENT",
                         "sample_rate"),
    "pcm bad rate": (lambda s: _transcribe(s, pcm=pb.RawPcm(data=b"\0\0" * 100, sample_rate=7)), "INVALID_ARGUMENT",
                     "sample_rate"),
    "pcm odd bytes": (lambda s: _transcribe(s, pcm=pb.RawPcm(data=b"\0" * 101, sample_rate=16000)),
                      "INVALID_ARGUMENT", "even number of bytes"),
    "pcm empty": (lambda s: _transcribe(s, pcm=pb.RawPcm(data=b"", sample_rate=16000)), "INVALID_ARGUMENT",
                  "empty audio"),
    "unknown model": (lambda s: _transcribe(s, encoded=FLAC, options=pb.Options(model="large-v9")),
                      "INVALID_ARGUMENT", "large-v9"),
    "model path": (lambda s: _transcribe(s, encoded=FLAC, options=pb.Options(model="/etc")), "INVALID_ARGUMENT",
                   "not served"),
    "beam size": (lambda s: _transcribe(s, encoded=FLAC, options=pb.Options(beam_size=99)), "INVALID_ARGUMENT",
                  "options.beam_size"),
    "threshold over 1": (lambda s: _transcribe(s, encoded=FLAC, options=pb.Options(flag_threshold=1.5)),
                         "INVALID_ARGUMENT", "options.flag_threshold"),
    "threshold NaN": (lambda s: _transcribe(s, encoded=FLAC, options=pb.Options(suppress_threshold=float("nan"))),
                      "INVALID_ARGUMENT", "options.suppress_threshold"),
    "language": (lambda s: _transcribe(s, encoded=FLAC, options=pb.Options(language="x")), "INVALID_ARGUMENT",
                 "options.language"),
    "policy enum": (lambda s: _transcribe(s, encoded=FLAC, options=pb.Options(policy=7)), "INVALID_ARGUMENT",
                    "options.policy"),
    "audio over cap (file)": (lambda s: _transcribe(s, encoded=wav_bytes(b"\0\0" * 16000 * 41)), "OUT_OF_RANGE",
                              "limit is 40"),
    "audio over cap (pcm)": (lambda s: _transcribe(s, pcm=pb.RawPcm(data=b"\0\0" * 16000 * 41, sample_rate=16000)),
                             "OUT_OF_RANGE", "limit is 40"),
    "message over max_message_bytes": (lambda s: _transcribe(s, encoded=b"\0" * (MAX_MESSAGE + 1000)),
                                       "RESOURCE_EXHAUSTED", "larger than max"),
    "verify empty transcript": (lambda s: _verify(s, []), "INVALID_ARGUMENT", "transcript is empty"),
    "verify blank segment": (lambda s: _verify(s, ["  "]), "INVALID_ARGUMENT", "empty text"),
    "verify start without end": (lambda s: _verify(s, [pb.TranscriptSegment(text="hi", start_seconds=1)]),
                                 "INVALID_ARGUMENT", "start and end"),
    "verify end before start": (lambda s: _verify(s, [("hi", 3.0, 2.0)]), "INVALID_ARGUMENT", "must be after start"),
    "verify past the audio": (lambda s: _verify(s, [("hi", 1.0, 60.0)]), "INVALID_ARGUMENT", "after the audio"),
    "verify text too long": (lambda s: _verify(s, ["x" * 5000]), "INVALID_ARGUMENT", "transcript[0].text"),
    "verify does not fit a window": (lambda s: _verify(s, ["word " * 700]), "INVALID_ARGUMENT", "tokens"),
    "verify corrupt audio": (lambda s: lambda: s.Verify(pb.VerifyRequest(encoded=b"junk" * 100, transcript=[
        pb.TranscriptSegment(text="hi")]), timeout=30), "INVALID_ARGUMENT", "not a readable audio"),
    "stream without config": (lambda s: _stream(s, [pb.AudioChunk(pcm16=b"\0\0" * 160)]), "INVALID_ARGUMENT",
                              "first AudioChunk must carry `config`"),
    "stream config twice": (lambda s: _stream(s, [_cfg(), pb.AudioChunk(pcm16=b"\0\0"), _cfg()]), "INVALID_ARGUMENT",
                            "only be sent in the first"),
    "stream no audio": (lambda s: _stream(s, [_cfg()]), "INVALID_ARGUMENT", "carried no audio"),
    "stream no messages": (lambda s: _stream(s, []), "INVALID_ARGUMENT", "empty stream"),
    "stream bad rate": (lambda s: _stream(s, [_cfg(rate=0), pb.AudioChunk(pcm16=b"\0\0")]), "INVALID_ARGUMENT",
                        "sample_rate"),
    "stream unknown model": (lambda s: _stream(s, [_cfg(model="nope"), pb.AudioChunk(pcm16=b"\0\0")]),
                             "INVALID_ARGUMENT", "nope"),
    "stream bad options": (lambda s: _stream(s, [_cfg(beam_size=40), pb.AudioChunk(pcm16=b"\0\0")]),
                           "INVALID_ARGUMENT", "options.beam_size"),
    "stream stray byte": (lambda s: _stream(s, [_cfg(), pb.AudioChunk(pcm16=b"\0\0\0")]), "INVALID_ARGUMENT",
                          "stray byte"),
    "stream over stream_max_seconds": (lambda s: _stream(s, [_cfg(), pb.AudioChunk(pcm16=b"\0\0" * 16000 * 41)]),
                                       "OUT_OF_RANGE", "40 s a stream may carry"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_code_and_message(server, case):
    build, code, needle = BAD_INPUTS[case]
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        err = rpc_error(build(guard_client.guard_pb2_grpc.GuardStub(channel)))
    assert err.code().name == code, (case, err.code(), err.details())
    assert needle.lower() in err.details().lower(), (case, err.details())
    assert "Traceback" not in err.details() and 'File "' not in err.details()


def test_server_keeps_serving_after_bad_input(server, client):
    before = sample_value(server, "whisper_guard_requests_total", method="Transcribe", code="INVALID_ARGUMENT")
    err = rpc_error(client.transcribe, b"not audio at all")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sample_value(server, "whisper_guard_requests_total", method="Transcribe",
                        code="INVALID_ARGUMENT") == before + 1
    assert is_speech_text(client.transcribe(SPEECH).text)
    assert client.health() == "SERVING"


def test_unexpected_error_is_internal_with_request_id_logged(server, client, monkeypatch, caplog):
    guard = server.service.guard
    real = guard.transcribe

    def exploding(audio, options, cancel=None):
        if options.beam_size == 3:
            raise ZeroDivisionError("synthetic fault for this one request")
        return real(audio, options, cancel)

    monkeypatch.setattr(guard, "transcribe", exploding)
    with caplog.at_level("ERROR", logger="guard.service"):
        err = rpc_error(client.transcribe, SPEECH, beam_size=3)
    assert err.code() == grpc.StatusCode.INTERNAL
    rid = guard_client.request_id_of(err)
    assert rid and f"request id {rid}" in err.details()
    assert "ZeroDivisionError" not in err.details() and "synthetic" not in err.details()
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is ZeroDivisionError
    assert is_speech_text(client.transcribe(SPEECH).text)  # the next request is fine


def test_unavailable_while_loading_then_serving(guard):
    """While the model loads: health NOT_SERVING and Guard calls UNAVAILABLE; then SERVING."""
    from guard.config import Settings
    from guard.transports.grpc.server import GuardServer

    release = threading.Event()

    def slow_load(settings):
        assert release.wait(60)
        return guard

    srv = GuardServer(Settings(address="127.0.0.1:0", metrics_address=""), load=slow_load).start()
    try:
        with GuardClient(srv.address) as c:
            assert c.health() == "NOT_SERVING"
            assert c.health("whisperguard.v1.Guard") == "NOT_SERVING"
            err = rpc_error(c.transcribe, SPEECH)
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "loading" in err.details()
            release.set()
            assert srv.loaded.wait(30) and c.health() == "SERVING"
            assert is_speech_text(c.transcribe(SPEECH).text)
    finally:
        srv.stop(0)


# ---- whisper-guard call ---------------------------------------------------------------------------


def _call(argv):
    parser = argparse.ArgumentParser()
    guard_client.add_call_arguments(parser)
    return guard_client.run_call(parser.parse_args(argv))


def test_cli_call_transcribe_verify_stream(server, capsys, tmp_path):
    assert _call([str(SPEECH), "--address", server.address]) == 0
    out = capsys.readouterr().out
    assert "That agent is already logged on." in out and "pass" in out and "request " in out

    transcript = tmp_path / "t.txt"
    transcript.write_text("That agent is already logged on.\nPlease enter your agent number followed by the pound key.\n")
    assert _call([str(SPEECH), "--address", server.address, "--verify", str(transcript), "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert len(reply["segments"]) == 2

    assert _call([str(SPEECH), "--address", server.address, "--stream", "--chunk-ms", "250"]) == 0
    assert "That agent is already logged on." in capsys.readouterr().out


def test_cli_call_reports_the_status_code(server, capsys, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....garbage")
    assert _call([str(junk), "--address", server.address]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_ARGUMENT:") and "request id" in err
    assert _call([str(tmp_path / "missing.flac"), "--address", server.address]) == 2


def test_processing_time_is_reported(client):
    t0 = time.monotonic()
    reply = client.transcribe(SPEECH)
    assert 0 < reply.summary.processing_seconds <= time.monotonic() - t0

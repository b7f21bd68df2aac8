"""Words over gRPC: a real server on 127.0.0.1 around the real tiny.en, our client and raw stubs."""
from __future__ import annotations

import grpc
import pytest

from grpc_fixtures import SPEECH, SPEECH_TEXT, pcm16, rpc_error, running_server
from guard.client import GuardClient, pcm16_chunks
from guard.grpc_gen import guard_pb2 as pb
from guard.grpc_gen import guard_pb2_grpc
from guard.labels import words


@pytest.fixture(scope="module")
def client(guard):
    with running_server(guard) as srv, GuardClient(srv.address, timeout=120) as c:
        c.address = srv.address
        yield c


def test_transcribe_returns_words_only_when_asked(client, guard, load_audio):
    plain = client.transcribe(SPEECH)
    assert all(len(s.words) == 0 for s in plain.segments)
    reply = client.transcribe(SPEECH, word_timestamps=True)
    assert reply.segments and all(s.words for s in reply.segments)
    local = guard.transcribe(load_audio(SPEECH), guard_options(word_timestamps=True))
    for got, want in zip(reply.segments, local.segments):
        assert "".join(w.word for w in got.words).strip() == got.text
        assert [w.word for w in got.words] == [w.word for w in want.words]
        assert [t for w in got.words for t in (w.start_seconds, w.end_seconds)] == \
            pytest.approx([t for w in want.words for t in (w.start, w.end)], abs=1e-9)
        assert all(w.verdict in (pb.VERDICT_PASS, pb.VERDICT_FLAG, pb.VERDICT_SUPPRESS) for w in got.words)
        assert all(0 <= w.score <= 1 and 0 <= w.probability <= 1 for w in got.words)


def guard_options(**kw):
    from guard.results import RequestOptions

    return RequestOptions(**kw)


def test_word_granularity_implies_words_and_verify_carries_them(client):
    reply = client.verify(SPEECH, [SPEECH_TEXT], granularity="word", policy="suppress")
    seg = reply.segments[0]
    assert words(" ".join(w.word for w in seg.words), "en") == words(SPEECH_TEXT, "en")
    assert seg.text.strip() == SPEECH_TEXT  # the segment keeps the given text, whole
    kept = "".join(w.word for w in seg.words if w.verdict != pb.VERDICT_SUPPRESS).strip()
    assert reply.text == kept


def test_stream_segments_carry_words(client):
    events = list(client.stream(pcm16_chunks(pcm16(SPEECH), chunk_seconds=0.5), sample_rate=16000,
                                word_timestamps=True))
    segments = [e.segment for e in events if e.HasField("segment")]
    assert segments and all(s.words for s in segments)
    assert words(" ".join(w.word for s in segments for w in s.words), "en") == words(SPEECH_TEXT, "en")


def test_an_unknown_granularity_is_invalid_argument(client):
    with grpc.insecure_channel(client.address) as channel:
        stub = guard_pb2_grpc.GuardStub(channel)
        request = pb.TranscribeRequest(encoded=SPEECH.read_bytes(), options=pb.Options(granularity=7))
        err = rpc_error(lambda: stub.Transcribe(request, timeout=60))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "granularity" in err.details()

"""Admission control on a real server: overload, cancellation, deadlines, stream places, buffers."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from conftest import is_speech_text
from grpc_fixtures import SPEECH, SPEECH_TEXT, SPEECH_THEN_MUSIC, pcm16, running_server, sample_value
from guard.client import GuardClient, pcm16_chunks
from guard.errors import Cancelled
from guard.grpc_gen import guard_pb2 as pb
from guard.serving.admission import Admission
from guard.transports.grpc.servicer import ChunkReader

LONG_REPEATS = 30  # 30 x 36 s = 18 min of audio (36 windows): tens of seconds of work unless stopped


def _wait(predicate, timeout: float, step: float = 0.01) -> float:
    """Seconds until `predicate()` held; fails after `timeout`."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        time.sleep(step)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def long_request():
    return pb.TranscribeRequest(pcm=pb.RawPcm(data=pcm16(SPEECH_THEN_MUSIC) * LONG_REPEATS, sample_rate=16000))


@pytest.fixture(scope="module")
def one_slot(guard):
    """One inference slot, no queue."""
    with running_server(guard, max_concurrent=1, max_queued=0) as srv:
        yield srv


def _stub(server):
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)])
    from guard.grpc_gen import guard_pb2_grpc

    return channel, guard_pb2_grpc.GuardStub(channel)


def test_overload_rejects_the_excess_at_once_and_serves_the_rest(guard):
    with running_server(guard, max_concurrent=1, max_queued=1) as server:
        channel, stub = _stub(server)
        request = pb.TranscribeRequest(encoded=SPEECH_THEN_MUSIC.read_bytes())
        done_at = {}
        t0 = time.monotonic()
        calls = [stub.Transcribe.future(request, timeout=120) for _ in range(6)]
        for i, f in enumerate(calls):
            f.add_done_callback(lambda _f, i=i: done_at.setdefault(i, time.monotonic() - t0))
        outcomes = []
        for f in calls:
            try:
                f.result(timeout=150)
                outcomes.append("OK")
            except grpc.RpcError as e:
                outcomes.append(e.code().name)
                assert "server busy" in e.details() and "retry" in e.details()
        channel.close()
        assert sorted(outcomes) == ["OK"] * 2 + ["RESOURCE_EXHAUSTED"] * 4, outcomes
        rejected = [done_at[i] for i, o in enumerate(outcomes) if o != "OK"]
        served = [done_at[i] for i, o in enumerate(outcomes) if o == "OK"]
        assert max(rejected) < min(served) and max(rejected) < 2.0, (rejected, served)
        assert sample_value(server, "whisper_guard_rejected_total", method="Transcribe", reason="overload") == 4
        assert server.admission.admitted == 0
        with GuardClient(server.address) as c:
            assert is_speech_text(c.transcribe(SPEECH).text)


def test_cancelled_call_stops_and_frees_its_slot(one_slot, long_request):
    channel, stub = _stub(one_slot)
    before = sample_value(one_slot, "whisper_guard_requests_total", method="Transcribe", code="CANCELLED")
    future = stub.Transcribe.future(long_request, timeout=300)
    _wait(lambda: one_slot.admission.running == 1, 30)
    time.sleep(0.5)
    future.cancel()
    freed = _wait(lambda: one_slot.admission.admitted == 0, 30, 0.05)
    assert freed < 8, f"the slot stayed taken {freed:.1f} s after the cancel"
    assert sample_value(one_slot, "whisper_guard_requests_total", method="Transcribe",
                        code="CANCELLED") == before + 1
    reply = stub.Transcribe(pb.TranscribeRequest(encoded=SPEECH.read_bytes()), timeout=60)
    assert is_speech_text(reply.text)
    channel.close()


def test_deadline_exceeded_stops_work_and_frees_the_slot(one_slot, long_request):
    channel, stub = _stub(one_slot)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stub.Transcribe(long_request, timeout=1.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 5
    freed = _wait(lambda: one_slot.admission.admitted == 0, 30, 0.05)
    assert freed < 8, f"work went on {freed:.1f} s past the deadline"
    assert sample_value(one_slot, "whisper_guard_requests_total", method="Transcribe", code="DEADLINE_EXCEEDED") == 1
    reply = stub.Transcribe(pb.TranscribeRequest(encoded=SPEECH.read_bytes()), timeout=60)
    assert is_speech_text(reply.text)
    channel.close()


def test_cancelled_while_queued_leaves_the_queue(guard, long_request):
    with running_server(guard, max_concurrent=1, max_queued=1) as server:
        channel, stub = _stub(server)
        running = stub.Transcribe.future(long_request, timeout=300)
        _wait(lambda: server.admission.running == 1, 30)
        queued = stub.Transcribe.future(pb.TranscribeRequest(encoded=SPEECH.read_bytes()), timeout=300)
        _wait(lambda: server.admission.waiting == 1, 10)
        queued.cancel()
        assert _wait(lambda: server.admission.waiting == 0 and server.admission.admitted == 1, 5) < 1.0
        third = stub.Transcribe.future(pb.TranscribeRequest(encoded=SPEECH.read_bytes()), timeout=300)
        _wait(lambda: server.admission.waiting == 1, 10)  # admitted into the freed place, not refused
        running.cancel()
        assert is_speech_text(third.result(timeout=60).text)
        channel.close()


def test_open_stream_holds_a_place_until_it_ends(one_slot):
    release = threading.Event()

    def chunks():
        yield from pcm16_chunks(pcm16(SPEECH), chunk_seconds=0.5)
        release.wait(60)

    with GuardClient(one_slot.address, timeout=120) as c:
        events = []
        reader = threading.Thread(target=lambda: events.extend(c.stream(chunks(), sample_rate=16000)))
        reader.start()
        _wait(lambda: one_slot.admission.admitted == 1, 10)
        with pytest.raises(grpc.RpcError) as info:
            c.transcribe(SPEECH)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        release.set()
        reader.join(60)
        assert is_speech_text(events[-1].summary.text)
        assert is_speech_text(c.transcribe(SPEECH).text)


def test_stream_buffer_is_bounded():
    """With nobody consuming, the reader takes `maxsize` chunks (+1 in hand) off the wire, no more."""
    pulled = []

    def wire():
        for i in range(1000):
            pulled.append(i)
            yield pb.AudioChunk(pcm16=b"\0\0")

    reader = ChunkReader(wire(), maxsize=4)
    time.sleep(0.5)
    assert len(pulled) <= 5
    got = [reader.get(lambda: False) for _ in range(3)]
    assert len(got) == 3
    time.sleep(0.3)
    assert len(pulled) <= 8
    reader.close()


def test_admission_is_fifo_and_cancellable():
    adm = Admission(max_concurrent=1, max_queued=2)
    tickets = [adm.admit() for _ in range(3)]
    assert all(tickets) and adm.admit() is None
    order, holders = [], []
    first = tickets[0].slot(lambda: False)
    first.__enter__()

    def take(i):
        with tickets[i].slot(lambda: False):
            order.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
        _wait(lambda n=len(holders) + 1: adm.waiting == n, 5)
        holders.append(t)
    first.__exit__(None, None, None)
    for t in threads:
        t.join(5)
    assert order == [1, 2]
    gone = threading.Event()
    with tickets[0].slot(lambda: False):
        threading.Timer(0.2, gone.set).start()
        with pytest.raises(Cancelled):
            with tickets[1].slot(gone.is_set):
                pytest.fail("a slot was granted to a caller that had gone while the only slot was held")
        assert adm.waiting == 0 and adm.running == 1
    for t in tickets:
        t.release()
    assert adm.admitted == 0 and adm.running == 0 and adm.waiting == 0

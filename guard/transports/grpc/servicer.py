"""The gRPC servicer: request message -> serving layer -> response message, outcome -> status.

One request never affects another: each runs in its own worker thread with its own audio; the
serving layer (`guard.serving.Serving`) admits it, runs it, classifies its errors and counts it;
this module only translates protobuf and canonical status codes. The client never sees a
traceback: an unexpected error is INTERNAL with a request id that the server log repeats.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Iterator

import grpc
from google.protobuf.message import Message

from guard.errors import AudioError, BadRequest, Cancelled, OptionsError
from guard.grpc_gen import guard_pb2 as pb
from guard.grpc_gen import guard_pb2_grpc
from guard.intake import PcmStream
from guard.results import RequestOptions, ScoredSegment
from guard.serving.call import REQUEST_ID_KEY, Call, Outcome, request_id
from guard.serving.core import Serving
from guard.transports.grpc.messages import (
    audio_from_request,
    kept_text,
    options_from_pb,
    segment_to_pb,
    summary_to_pb,
    transcript_from_pb,
)
from guard.transports.grpc.status import status_of

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Guard"].full_name


class MalformedMessage(BadRequest):
    """Request bytes that do not parse as the method's message (invalid UTF-8 in a string, cut short...)."""


# ---- request bytes -> messages ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Malformed:
    """Stands in for a request message whose bytes did not parse; the servicer refuses it."""

    type_name: str
    size: int

    def error(self) -> MalformedMessage:
        return MalformedMessage(
            f"the request is not a valid {self.type_name} ({self.size} bytes that do not parse: invalid UTF-8 in "
            "a string field, a truncated message or wrong field types); build it from whisperguard/v1/guard.proto")


def _parser(message_type: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A request deserializer that never raises: gRPC's own answer to a failing one is a bare
    INTERNAL without request id or metric, which is wrong for what is the client's bad input."""
    name = message_type.DESCRIPTOR.full_name

    def parse(data: bytes) -> Message | Malformed:
        try:
            return message_type.FromString(data)
        except Exception:  # noqa: BLE001 - DecodeError and whatever else the parser raises on bad bytes
            return Malformed(name, len(data))

    return parse


def add_to_server(servicer: GuardService, server: grpc.Server) -> None:
    """`guard_pb2_grpc.add_GuardServicer_to_server`, with deserializers that hand bad bytes to the
    servicer as `Malformed` (INVALID_ARGUMENT, with request id) instead of failing inside gRPC."""
    handlers = {
        "Transcribe": grpc.unary_unary_rpc_method_handler(
            servicer.Transcribe, request_deserializer=_parser(pb.TranscribeRequest),
            response_serializer=pb.TranscribeResponse.SerializeToString),
        "StreamTranscribe": grpc.stream_stream_rpc_method_handler(
            servicer.StreamTranscribe, request_deserializer=_parser(pb.AudioChunk),
            response_serializer=pb.SegmentEvent.SerializeToString),
        "Verify": grpc.unary_unary_rpc_method_handler(
            servicer.Verify, request_deserializer=_parser(pb.VerifyRequest),
            response_serializer=pb.VerifyResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


# ---- audio chunks off the wire ---------------------------------------------------------------------


class ChunkReader:
    """Pulls AudioChunks off the wire on its own thread into a bounded queue.

    A full queue stops the reading, and gRPC flow control then holds the client back: this is
    the per-stream buffer bound (`stream_buffer_chunks`).
    """

    END = object()

    def __init__(self, request_iterator: Iterator[pb.AudioChunk], maxsize: int):
        self._it = request_iterator
        self._q: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guard-stream-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._it:
                if not self._put(chunk):
                    return
        except Exception as e:  # the call was cancelled or ended under us
            self._put(e)
            return
        self._put(self.END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, cancel: Callable[[], bool]):
        """The next chunk or END; raises Cancelled when the call goes away while waiting."""
        while True:
            if cancel():
                raise Cancelled("the call ended while waiting for audio")
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, Exception):
                raise Cancelled(f"the audio stream broke off ({type(item).__name__})")
            if isinstance(item, Malformed):
                raise item.error()
            return item

    def get_ready(self) -> list:
        """Whatever else is already buffered (non-blocking), in order, ending at END if seen."""
        items = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return items
            if isinstance(item, Exception):
                raise Cancelled(f"the audio stream broke off ({type(item).__name__})")
            if isinstance(item, Malformed):
                raise item.error()
            items.append(item)
            if item is self.END:
                return items

    def close(self) -> None:
        self._stop.set()


# ---- the servicer ----------------------------------------------------------------------------------


class GuardService(guard_pb2_grpc.GuardServicer):
    """Implements whisperguard.v1.Guard on the shared serving core."""

    def __init__(self, serving: Serving):
        self.serving = serving
        self.settings = serving.settings

    # the serving core's state, under the names the server and its tests use
    @property
    def guard(self):
        return self.serving.guard

    @property
    def load_error(self) -> str | None:
        return self.serving.load_error

    @property
    def hard_stop(self) -> threading.Event:
        return self.serving.hard_stop

    # -- RPCs --
    def Transcribe(self, request: pb.TranscribeRequest, context) -> pb.TranscribeResponse:
        return self._unary("Transcribe", request, context, self._transcribe)

    def Verify(self, request: pb.VerifyRequest, context) -> pb.VerifyResponse:
        return self._unary("Verify", request, context, self._verify)

    def StreamTranscribe(self, request_iterator, context) -> Iterator[pb.SegmentEvent]:
        call = self._begin("StreamTranscribe", context)
        result = None
        try:
            self.serving.admit(call)
            try:
                result = yield from self._stream(call, request_iterator)
            finally:
                self.serving.release(call)
            call.outcome = Outcome.ok
        except GeneratorExit:  # the client went away between two events
            call.outcome = Outcome.cancelled
            raise
        except Exception as e:  # noqa: BLE001 - every error becomes a status below
            self.serving.fail(call, e, finish=False)
        finally:
            self.serving.finish(call, result)
        if call.outcome is not Outcome.ok:
            context.abort(status_of(call.outcome), call.message)

    # -- unary --
    def _unary(self, method: str, request, context, work):
        call = self._begin(method, context)

        def check() -> None:
            if isinstance(request, Malformed):
                raise request.error()

        response = self.serving.unary(call, lambda c: work(c, request), check)
        if call.outcome is not Outcome.ok:
            context.abort(status_of(call.outcome), call.message)
        return response

    def _transcribe(self, call: Call, request: pb.TranscribeRequest):
        options = self._options(request.options)
        source = audio_from_request(request, self.settings.max_audio_seconds)
        result = self.serving.infer(call, lambda guard, cancel: guard.transcribe(source, options, cancel))
        return result, pb.TranscribeResponse(
            request_id=call.request_id, text=kept_text(result.segments, options.granularity),
            segments=[segment_to_pb(s, options.return_features) for s in result.segments],
            summary=summary_to_pb(result, result.segments, call.processing(), call.queued),
        )

    def _verify(self, call: Call, request: pb.VerifyRequest):
        options = self._options(request.options)
        transcript = transcript_from_pb(request.transcript)
        source = audio_from_request(request, self.settings.max_audio_seconds)
        result = self.serving.infer(call, lambda guard, cancel: guard.verify(source, transcript, options, cancel))
        return result, pb.VerifyResponse(
            request_id=call.request_id, text=kept_text(result.segments, options.granularity),
            segments=[segment_to_pb(s, options.return_features) for s in result.segments],
            summary=summary_to_pb(result, result.segments, call.processing(), call.queued),
        )

    # -- streaming --
    def _stream(self, call: Call, request_iterator):
        cancel = call.cancelled
        reader = ChunkReader(request_iterator, self.settings.stream_buffer_chunks)
        try:
            first = reader.get(cancel)
            if first is ChunkReader.END:
                raise AudioError("empty stream: send a first AudioChunk with `config`, then PCM16 audio")
            if not first.HasField("config"):
                raise OptionsError("the first AudioChunk must carry `config` (sample_rate, channels, options)")
            cfg = first.config
            options = self._options(cfg.options)
            pcm = PcmStream(cfg.sample_rate, cfg.channels or 1, self.settings.stream_max_seconds)
            session = self.serving.guard.open_stream(options)
            sent: list[ScoredSegment] = []
            sequence = 0
            pending, ended = [first], False
            while not ended:
                if not pending:
                    pending = [reader.get(cancel)]
                pending += reader.get_ready()
                ended = pending[-1] is ChunkReader.END
                chunks = pending[:-1] if ended else pending
                pending = []
                if any(c is not first and c.HasField("config") for c in chunks):
                    raise OptionsError("`config` may only be sent in the first AudioChunk")
                samples = session.decode(pcm, b"".join(c.pcm16 for c in chunks), final=ended)
                if not samples.size:
                    continue
                segments = self.serving.infer(call, lambda _guard, c: session.feed(samples, c))
                for s in segments:
                    sequence += 1
                    sent.append(s)
                    yield pb.SegmentEvent(sequence=sequence, request_id=call.request_id,
                                          segment=segment_to_pb(s, options.return_features))
            if pcm.samples_in == 0:
                raise AudioError("the stream carried no audio: send PCM16 in AudioChunk.pcm16 after the config")
            result = self.serving.infer(call, lambda _guard, c: session.finish(c))
            for s in result.segments:
                sequence += 1
                sent.append(s)
                yield pb.SegmentEvent(sequence=sequence, request_id=call.request_id,
                                      segment=segment_to_pb(s, options.return_features))
            whole = dataclasses.replace(result, segments=sent)
            summary = summary_to_pb(whole, sent, call.processing(), call.queued)
            yield pb.SegmentEvent(sequence=sequence + 1, request_id=call.request_id,
                                  summary=pb.StreamSummary(summary=summary, text=kept_text(sent, options.granularity)))
            return whole
        finally:
            reader.close()

    # -- shared steps --
    def _begin(self, method: str, context) -> Call:
        offered = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY and isinstance(value, str) and request_id(value) == value:
                offered = value
        left = context.time_remaining()
        call = self.serving.begin(method, offered_id=offered, timeout=left, is_active=context.is_active)
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        return call

    @staticmethod
    def _options(o: pb.Options) -> RequestOptions:
        return options_from_pb(o)

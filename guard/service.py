"""The gRPC servicer: request message -> pipeline -> response message, and every error -> a status.

One request never affects another: each runs in its own worker thread with its own decoded
audio, a typed error becomes its canonical status code with the error's own message, and
anything unexpected becomes INTERNAL with a request id that the server log repeats next to
the traceback. The client never sees a traceback.

Admission (how many requests run or wait) is the server's (`guard.server.Admission`); this
module only asks it for a ticket and, around each pipeline call, for an inference slot.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import av
import grpc
import numpy as np
from google.protobuf.message import Message
from pydantic import ValidationError

from guard import audio, results
from guard.config import PolicyMode, Settings
from guard.errors import AudioError, AudioTooLong, Cancelled, GuardError, OptionsError, TranscriptError
from guard.grpc_gen import guard_pb2 as pb
from guard.grpc_gen import guard_pb2_grpc
from guard.results import GuardResult, RequestOptions, ScoredSegment, TranscriptSegment, Verdict

if TYPE_CHECKING:
    from guard.metrics import GuardMetrics
    from guard.pipeline import Guard
    from guard.server import Admission

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Guard"].full_name
REQUEST_ID_KEY = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

POLICY_TO_PB = {
    PolicyMode.annotate: pb.POLICY_MODE_ANNOTATE,
    PolicyMode.flag: pb.POLICY_MODE_FLAG,
    PolicyMode.suppress: pb.POLICY_MODE_SUPPRESS,
}
PB_TO_POLICY = {v: k for k, v in POLICY_TO_PB.items()}
VERDICT_TO_PB = {Verdict.pass_: pb.VERDICT_PASS, Verdict.flag: pb.VERDICT_FLAG, Verdict.suppress: pb.VERDICT_SUPPRESS}


class Unavailable(GuardError):
    """The server cannot take the request now (model loading, shutting down); retry."""

    code = "UNAVAILABLE"


class Overloaded(GuardError):
    """Every inference slot and queue place is taken."""

    code = "RESOURCE_EXHAUSTED"


class MalformedMessage(GuardError):
    """Request bytes that do not parse as the method's message (invalid UTF-8 in a string, cut short...)."""

    code = "INVALID_ARGUMENT"


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


# ---- messages <-> pipeline types ---------------------------------------------------------------


def options_from_pb(o: pb.Options) -> RequestOptions:
    """Proto options (zero = server default) to validated RequestOptions."""
    fields: dict = {"return_features": o.return_features}
    if o.model:
        fields["model"] = o.model
    if o.language:
        fields["language"] = o.language
    if o.beam_size:
        fields["beam_size"] = o.beam_size
    if o.policy:
        if o.policy not in PB_TO_POLICY:
            raise OptionsError(f"options.policy: unknown value {o.policy}; use POLICY_MODE_ANNOTATE, _FLAG or _SUPPRESS")
        fields["policy"] = PB_TO_POLICY[o.policy]
    if o.HasField("flag_threshold"):
        fields["flag_threshold"] = o.flag_threshold
    if o.HasField("suppress_threshold"):
        fields["suppress_threshold"] = o.suppress_threshold
    return RequestOptions(**fields)


def transcript_from_pb(segments) -> list[TranscriptSegment]:
    if not segments:
        raise TranscriptError("transcript is empty: send at least one TranscriptSegment with text")
    out = []
    for i, s in enumerate(segments):
        try:
            out.append(TranscriptSegment(
                text=s.text,
                start=s.start_seconds if s.HasField("start_seconds") else None,
                end=s.end_seconds if s.HasField("end_seconds") else None,
            ))
        except ValidationError as e:
            raise TranscriptError(describe_validation(e, f"transcript[{i}]")) from None
    return out


def describe_validation(err: ValidationError, prefix: str) -> str:
    """`options.beam_size: Input should be less than or equal to 16 (got 99)`; one line per problem."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in (prefix, *e.get("loc", ())) if p != "")
        got = repr(e.get("input"))
        got = got if len(got) <= 40 else got[:37] + "..."
        parts.append(f"{loc}: {e.get('msg', 'invalid')} (got {got})")
    return "; ".join(parts) or f"invalid {prefix}"


def segment_to_pb(s: ScoredSegment, with_features: bool) -> pb.Segment:
    seg = s.segment
    out = pb.Segment(
        index=seg.index, start_seconds=seg.start, end_seconds=seg.end, text=seg.text,
        score=s.score, verdict=VERDICT_TO_PB[Verdict(s.verdict)], window=max(0, seg.window),
        avg_logprob=seg.avg_logprob, no_speech_prob=seg.no_speech_prob, compression_ratio=seg.compression_ratio,
        reasons=[pb.Reason(feature=r.feature, value=r.value, contribution=r.contribution) for r in s.reasons],
    )
    if with_features and s.features:
        out.features.update({k: float(v) for k, v in s.features.items()})
    return out


def kept_text(segments: list[ScoredSegment]) -> str:
    """The transcript without suppressed segments (the same rule as GuardResult.text)."""
    return results.kept_text(segments)


def summary_to_pb(result: GuardResult, segments: list[ScoredSegment], processing: float, queued: float) -> pb.Summary:
    return pb.Summary(
        model=result.model, language=result.language or "", policy=POLICY_TO_PB[PolicyMode(result.policy)],
        audio_seconds=result.audio_seconds, processing_seconds=processing, queued_seconds=queued,
        timings=[pb.StageTiming(stage=k, seconds=v) for k, v in result.timings.items()],
        segments=len(segments),
        flagged=sum(1 for s in segments if s.verdict is Verdict.flag),
        suppressed=sum(1 for s in segments if s.verdict is Verdict.suppress),
    )


# ---- audio in ------------------------------------------------------------------------------------


def audio_from_request(request, max_seconds: float) -> np.ndarray:
    """The `oneof audio` of a Transcribe/Verify request as 16 kHz mono float32."""
    kind = request.WhichOneof("audio")
    if kind is None:
        raise AudioError("no audio: set `encoded` (an audio file's bytes) or `pcm` (raw PCM16 with sample_rate)")
    if kind == "encoded":
        return audio.decode_bytes(request.encoded, max_seconds=max_seconds)
    pcm = request.pcm
    if pcm.sample_rate == 0:
        raise AudioError("pcm.sample_rate is required: the rate of the raw PCM16 in Hz (e.g. 16000)")
    return audio.from_pcm16(pcm.data, pcm.sample_rate, channels=pcm.channels or 1, max_seconds=max_seconds)


class PcmStream:
    """Raw PCM16 arriving in arbitrary pieces -> 16 kHz mono float32, independent of the piece sizes.

    Bytes that do not complete a frame wait for the next piece. At 16 kHz the conversion is
    `audio.from_pcm16` itself; at other rates one resampler runs across the whole stream (a
    fresh one per piece would click at every boundary).
    """

    def __init__(self, sample_rate: int, channels: int, max_seconds: float):
        self.sample_rate, self.channels, self.max_seconds = sample_rate, channels, max_seconds
        self._frame_bytes = 2 * channels
        self._rest = b""
        self._resampler: av.AudioResampler | None = None
        self.samples_in = 0  # frames received, at the input rate
        if not audio.MIN_PCM_RATE <= sample_rate <= audio.MAX_PCM_RATE:
            raise AudioError(f"config.sample_rate must be the rate of the PCM16 you stream, in "
                             f"[{audio.MIN_PCM_RATE}, {audio.MAX_PCM_RATE}] Hz; got {sample_rate}")
        if not 1 <= channels <= audio.MAX_CHANNELS:
            raise AudioError(f"config.channels must be in [1, {audio.MAX_CHANNELS}]; got {channels}")

    @property
    def seconds_in(self) -> float:
        return self.samples_in / self.sample_rate

    def push(self, data: bytes) -> np.ndarray:
        data = self._rest + data
        usable = len(data) - len(data) % self._frame_bytes
        self._rest = data[usable:]
        if not usable:
            return np.zeros(0, np.float32)
        self.samples_in += usable // self._frame_bytes
        if self.seconds_in > self.max_seconds:
            raise AudioTooLong(f"the stream sent more than the {self.max_seconds:g} s a stream may carry; "
                               "end this stream and continue in a new one")
        if self.sample_rate == audio.SAMPLE_RATE:
            return audio.from_pcm16(data[:usable], self.sample_rate, channels=self.channels, max_seconds=self.max_seconds)
        frames = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, self.channels)
        mono = (frames[:, 0] if self.channels == 1 else frames.mean(axis=1, dtype=np.float32)).astype(np.float32) / 32768.0
        return self._resample(mono)

    def flush(self) -> np.ndarray:
        if self._rest:
            raise AudioError(f"the stream ended inside a PCM16 frame: {len(self._rest)} stray byte(s); "
                             f"send whole frames of {self._frame_bytes} bytes")
        return self._resample(None) if self._resampler is not None else np.zeros(0, np.float32)

    def _resample(self, mono: np.ndarray | None) -> np.ndarray:
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=audio.SAMPLE_RATE)
        frame = None
        if mono is not None:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None, :]), format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.clip(np.concatenate(out), -1, 1).astype(np.float32) if out else np.zeros(0, np.float32)


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


@dataclasses.dataclass
class _Call:
    method: str
    request_id: str
    context: grpc.ServicerContext
    started: float = dataclasses.field(default_factory=time.monotonic)
    queued: float = 0.0


class GuardService(guard_pb2_grpc.GuardServicer):
    """Implements whisperguard.v1.Guard on a shared `guard.pipeline.Guard`."""

    def __init__(self, settings: Settings, admission: Admission, metrics: GuardMetrics | None = None):
        self.settings = settings
        self.admission = admission
        self.metrics = metrics
        self.guard: Guard | None = None
        self.load_error: str | None = None
        self.hard_stop = threading.Event()  # set when the drain grace period is over

    # -- RPCs --
    def Transcribe(self, request: pb.TranscribeRequest, context) -> pb.TranscribeResponse:
        return self._unary("Transcribe", request, context, self._transcribe)

    def Verify(self, request: pb.VerifyRequest, context) -> pb.VerifyResponse:
        return self._unary("Verify", request, context, self._verify)

    def StreamTranscribe(self, request_iterator, context) -> Iterator[pb.SegmentEvent]:
        call = self._begin("StreamTranscribe", context)
        code, message, result = "OK", "", None
        try:
            ticket = self._admit(call)
            try:
                result = yield from self._stream(call, ticket, request_iterator)
            finally:
                ticket.release()
        except GeneratorExit:  # the client went away between two events
            code = "CANCELLED"
            raise
        except Exception as e:  # noqa: BLE001 - every error becomes a status below
            code, message = self._status_of(e, call)
        finally:
            self._finish(call, code, result)
        if code != "OK":
            context.abort(grpc.StatusCode[code], message)

    # -- unary plumbing --
    def _unary(self, method: str, request, context, work):
        call = self._begin(method, context)
        code, message, result, response = "OK", "", None, None
        try:
            if isinstance(request, Malformed):
                raise request.error()
            ticket = self._admit(call)
            try:
                result, response = work(call, ticket, request)
            finally:
                ticket.release()
        except Exception as e:  # noqa: BLE001 - every error becomes a status below
            code, message = self._status_of(e, call)
        finally:
            self._finish(call, code, result)
        if code != "OK":
            context.abort(grpc.StatusCode[code], message)
        return response

    def _transcribe(self, call: _Call, ticket, request: pb.TranscribeRequest):
        options = self._options(request.options)
        cancel = self._cancel(call)
        with ticket.slot(cancel) as waited:
            call.queued += waited
            t0 = time.perf_counter()
            samples = audio_from_request(request, self.settings.max_audio_seconds)
            t_decode = time.perf_counter() - t0
            result = self._guard().transcribe(samples, options, cancel)
        result.timings = {"decode": t_decode, **result.timings}
        return result, pb.TranscribeResponse(
            request_id=call.request_id, text=kept_text(result.segments),
            segments=[segment_to_pb(s, options.return_features) for s in result.segments],
            summary=summary_to_pb(result, result.segments, time.monotonic() - call.started - call.queued, call.queued),
        )

    def _verify(self, call: _Call, ticket, request: pb.VerifyRequest):
        options = self._options(request.options)
        transcript = transcript_from_pb(request.transcript)
        cancel = self._cancel(call)
        with ticket.slot(cancel) as waited:
            call.queued += waited
            t0 = time.perf_counter()
            samples = audio_from_request(request, self.settings.max_audio_seconds)
            t_decode = time.perf_counter() - t0
            result = self._guard().verify(samples, transcript, options, cancel)
        result.timings = {"decode": t_decode, **result.timings}
        return result, pb.VerifyResponse(
            request_id=call.request_id, text=kept_text(result.segments),
            segments=[segment_to_pb(s, options.return_features) for s in result.segments],
            summary=summary_to_pb(result, result.segments, time.monotonic() - call.started - call.queued, call.queued),
        )

    # -- streaming --
    def _stream(self, call: _Call, ticket, request_iterator):
        cancel = self._cancel(call)
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
            session = self._guard().open_stream(options)
            sent: list[ScoredSegment] = []
            sequence, t_decode = 0, 0.0
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
                t0 = time.perf_counter()
                samples = pcm.push(b"".join(c.pcm16 for c in chunks))
                if ended:
                    samples = np.concatenate([samples, pcm.flush()])
                t_decode += time.perf_counter() - t0
                if not samples.size:
                    continue
                with ticket.slot(cancel) as waited:
                    call.queued += waited
                    segments = session.feed(samples, cancel)
                for s in segments:
                    sequence += 1
                    sent.append(s)
                    yield pb.SegmentEvent(sequence=sequence, request_id=call.request_id,
                                          segment=segment_to_pb(s, options.return_features))
            if pcm.samples_in == 0:
                raise AudioError("the stream carried no audio: send PCM16 in AudioChunk.pcm16 after the config")
            with ticket.slot(cancel) as waited:
                call.queued += waited
                result = session.finish(cancel)
            for s in result.segments:
                sequence += 1
                sent.append(s)
                yield pb.SegmentEvent(sequence=sequence, request_id=call.request_id,
                                      segment=segment_to_pb(s, options.return_features))
            whole = dataclasses.replace(result, segments=sent, timings={"decode": t_decode, **result.timings})
            summary = summary_to_pb(whole, sent, time.monotonic() - call.started - call.queued, call.queued)
            yield pb.SegmentEvent(sequence=sequence + 1, request_id=call.request_id,
                                  summary=pb.StreamSummary(summary=summary, text=kept_text(sent)))
            return whole
        finally:
            reader.close()

    # -- shared steps --
    def _begin(self, method: str, context) -> _Call:
        rid = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY and isinstance(value, str) and _CLIENT_REQUEST_ID.fullmatch(value):
                rid = value
        call = _Call(method, rid or uuid.uuid4().hex[:16], context)
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        return call

    def _admit(self, call: _Call):
        shutting_down = Unavailable("the server is shutting down and takes no new requests; retry (another replica)")
        if self.admission.closed:
            raise shutting_down
        if self.guard is None:
            if self.load_error:
                raise Unavailable(f"the model failed to load ({self.load_error}); the server cannot serve")
            raise Unavailable("the model is still loading; retry in a few seconds (health reports SERVING when ready)")
        ticket = self.admission.admit()
        if ticket is None:
            if self.admission.closed:
                raise shutting_down
            if self.metrics:
                self.metrics.rejected(call.method)
            raise Overloaded(f"server busy: {self.admission.max_concurrent} requests running and "
                             f"{self.admission.max_queued} waiting; retry with backoff")
        return ticket

    def _guard(self) -> Guard:
        if self.guard is None:  # pragma: no cover - _admit checked
            raise Unavailable("the model is not loaded")
        return self.guard

    @staticmethod
    def _options(o: pb.Options) -> RequestOptions:
        try:
            return options_from_pb(o)
        except ValidationError as e:
            raise OptionsError(describe_validation(e, "options")) from None

    def _cancel(self, call: _Call) -> Callable[[], bool]:
        context = call.context

        def cancel() -> bool:
            if self.hard_stop.is_set() or not context.is_active():
                return True
            left = context.time_remaining()
            return left is not None and left <= 0

        return cancel

    def _status_of(self, err: Exception, call: _Call) -> tuple[str, str]:
        """(status name, message) for an exception; INTERNAL ones are logged with the request id."""
        if isinstance(err, Cancelled):
            if self.hard_stop.is_set():
                return "UNAVAILABLE", "the server shut down before this request finished; retry"
            left = call.context.time_remaining()
            if left is not None and left <= 0:
                return "DEADLINE_EXCEEDED", (f"deadline exceeded after {time.monotonic() - call.started:.1f} s; "
                                             "work stopped; allow a longer deadline for this much audio")
            return "CANCELLED", "the call was cancelled; work stopped"
        if isinstance(err, ValidationError):  # pipeline-side validation of options
            return "INVALID_ARGUMENT", describe_validation(err, "options")
        if isinstance(err, GuardError) and err.code in grpc.StatusCode.__members__ and err.code != "INTERNAL":
            return err.code, err.message
        log.error("request %s (%s) failed with an unexpected error", call.request_id, call.method, exc_info=err)
        return "INTERNAL", (f"internal error (request id {call.request_id}); the server logged the details "
                            "under this id; the server is still serving")

    def _finish(self, call: _Call, code: str, result: GuardResult | None) -> None:
        seconds = time.monotonic() - call.started
        if self.metrics:
            self.metrics.observe_request(call.method, code, seconds)
            if result is not None:
                self.metrics.observe_result(result, call.method)
        if result is not None:
            log.info("request %s %s %s: %.2f s audio, %d segments, %.2f s (%.2f s queued)", call.request_id,
                     call.method, code, result.audio_seconds, len(result.segments), seconds, call.queued)
        else:
            log.info("request %s %s %s after %.2f s", call.request_id, call.method, code, seconds)

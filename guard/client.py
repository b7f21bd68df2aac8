"""Python clients for `whisperguard.v1.Guard` (sync and asyncio) and `whisper-guard call FILE`.

    from guard.client import GuardClient
    with GuardClient("127.0.0.1:50051") as client:
        reply = client.transcribe("meeting.flac", policy="suppress")
        print(reply.text)                          # suppressed segments left out
        for seg in reply.segments:                 # every segment, with its score and verdict
            print(seg.start_seconds, seg.score, seg.verdict, seg.text)

Replies are the protobuf messages themselves; failures raise `grpc.RpcError` with the status
code and the server's message (and `x-request-id` in its trailing metadata).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from guard.grpc_gen import guard_pb2 as pb
from guard.grpc_gen import guard_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
_POLICIES = {"annotate": pb.POLICY_MODE_ANNOTATE, "flag": pb.POLICY_MODE_FLAG, "suppress": pb.POLICY_MODE_SUPPRESS}
VERDICT_NAMES = {pb.VERDICT_UNSPECIFIED: "?", pb.VERDICT_PASS: "pass", pb.VERDICT_FLAG: "flag",
                 pb.VERDICT_SUPPRESS: "suppress"}


class StreamIntegrityError(RuntimeError):
    """Events of a stream arrived out of sequence (lost or duplicated on the way)."""


# ---- request building -----------------------------------------------------------------------------


def make_options(*, model: str | None = None, language: str | None = None, beam_size: int | None = None,
                 policy: str | int | None = None, flag_threshold: float | None = None,
                 suppress_threshold: float | None = None, return_features: bool = False,
                 word_timestamps: bool = False, granularity: str | None = None) -> pb.Options:
    """`pb.Options` from keywords; None leaves the server's default. `policy`: annotate|flag|suppress;
    `granularity`: segment|word (what suppress removes from the text; word implies word timestamps)."""
    o = pb.Options(model=model or "", language=language or "", beam_size=beam_size or 0,
                   return_features=return_features, word_timestamps=word_timestamps)
    if granularity is not None:
        o.granularity = {"segment": pb.GRANULARITY_SEGMENT, "word": pb.GRANULARITY_WORD}[str(granularity).lower()]
    if policy is not None:
        o.policy = _POLICIES[str(getattr(policy, "value", policy)).lower()] if not isinstance(policy, int) else policy
    if flag_threshold is not None:
        o.flag_threshold = flag_threshold
    if suppress_threshold is not None:
        o.suppress_threshold = suppress_threshold
    return o


def audio_fields(audio: bytes | str | os.PathLike, *, sample_rate: int | None = None, channels: int = 1) -> dict:
    """The `oneof audio` of a request: a file (path or its bytes), or raw PCM16 when `sample_rate` is given."""
    data = audio if isinstance(audio, (bytes, bytearray, memoryview)) else Path(audio).read_bytes()
    if sample_rate:
        return {"pcm": pb.RawPcm(data=bytes(data), sample_rate=sample_rate, channels=channels)}
    return {"encoded": bytes(data)}


def transcript_segments(transcript: Iterable) -> list[pb.TranscriptSegment]:
    """Strings, (text, start, end) tuples, dicts with text/start/end, or TranscriptSegment messages."""
    out = []
    for item in transcript:
        if isinstance(item, pb.TranscriptSegment):
            out.append(item)
            continue
        if isinstance(item, str):
            text, start, end = item, None, None
        elif isinstance(item, dict):
            text, start, end = item["text"], item.get("start"), item.get("end")
        else:
            text, start, end = item
        seg = pb.TranscriptSegment(text=text)
        if start is not None:
            seg.start_seconds = start
        if end is not None:
            seg.end_seconds = end
        out.append(seg)
    return out


def pcm16_chunks(pcm: bytes, *, sample_rate: int = 16000, channels: int = 1, chunk_seconds: float = 0.1,
                 realtime: bool = False) -> Iterator[bytes]:
    """Cut PCM16 into pieces of `chunk_seconds` (sleeping in between when `realtime`)."""
    step = max(2 * channels, int(round(chunk_seconds * sample_rate)) * 2 * channels)
    for i in range(0, len(pcm), step):
        if realtime and i:
            time.sleep(chunk_seconds)
        yield pcm[i:i + step]


def stream_requests(chunks: Iterable[bytes], *, sample_rate: int, channels: int = 1,
                    options: pb.Options | None = None) -> Iterator[pb.AudioChunk]:
    """The AudioChunk sequence: config first, then the PCM16 pieces."""
    yield pb.AudioChunk(config=pb.StreamConfig(options=options or pb.Options(), sample_rate=sample_rate,
                                               channels=channels))
    for chunk in chunks:
        yield pb.AudioChunk(pcm16=bytes(chunk))


class _Sequence:
    def __init__(self):
        self.expected = 1

    def check(self, event: pb.SegmentEvent) -> pb.SegmentEvent:
        if event.sequence != self.expected:
            raise StreamIntegrityError(f"stream event {event.sequence} arrived where {self.expected} was due: "
                                       "events were lost or duplicated on the way")
        self.expected += 1
        return event


def request_id_of(err: grpc.RpcError) -> str | None:
    for key, value in (err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else ():
        if key == "x-request-id":
            return value
    return None


def _channel_args(address: str, *, token, root_certificates, certificate_chain, private_key, tls, server_name,
                  max_message_bytes):
    options = [("grpc.max_send_message_length", max_message_bytes),
               ("grpc.max_receive_message_length", max_message_bytes)]
    secure = tls or root_certificates is not None or certificate_chain is not None
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain) if secure else None
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return options, creds, metadata


class GuardClient:
    """Blocking client. TLS when `tls` or any certificate is given; `token` goes in `authorization`."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                 private_key: bytes | None = None, server_name: str | None = None, timeout: float | None = None,
                 max_message_bytes: int = 64 * 1024 * 1024):
        options, creds, self._metadata = _channel_args(
            address, token=token, root_certificates=root_certificates, certificate_chain=certificate_chain,
            private_key=private_key, tls=tls, server_name=server_name, max_message_bytes=max_message_bytes)
        self.channel = (grpc.secure_channel(address, creds, options=options) if creds
                        else grpc.insecure_channel(address, options=options))
        self.stub = guard_pb2_grpc.GuardStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    def __enter__(self) -> GuardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _md(self, request_id: str | None):
        return self._metadata + ((("x-request-id", request_id),) if request_id else ())

    def transcribe(self, audio: bytes | str | os.PathLike, *, sample_rate: int | None = None, channels: int = 1,
                   timeout: float | None = None, request_id: str | None = None, **options) -> pb.TranscribeResponse:
        """Transcribe a file (path or bytes) or raw PCM16 (`sample_rate` given). Options: see make_options."""
        request = pb.TranscribeRequest(options=make_options(**options),
                                       **audio_fields(audio, sample_rate=sample_rate, channels=channels))
        return self.stub.Transcribe(request, timeout=timeout or self.timeout, metadata=self._md(request_id))

    def verify(self, audio: bytes | str | os.PathLike, transcript: Iterable, *, sample_rate: int | None = None,
               channels: int = 1, timeout: float | None = None, request_id: str | None = None,
               **options) -> pb.VerifyResponse:
        """Score a transcript from any ASR against the audio."""
        request = pb.VerifyRequest(transcript=transcript_segments(transcript), options=make_options(**options),
                                   **audio_fields(audio, sample_rate=sample_rate, channels=channels))
        return self.stub.Verify(request, timeout=timeout or self.timeout, metadata=self._md(request_id))

    def stream(self, chunks: Iterable[bytes], *, sample_rate: int, channels: int = 1, timeout: float | None = None,
               request_id: str | None = None, **options) -> Iterator[pb.SegmentEvent]:
        """Stream PCM16 pieces; yields SegmentEvents (segments as they become final, then the summary)."""
        requests = stream_requests(chunks, sample_rate=sample_rate, channels=channels, options=make_options(**options))
        seq = _Sequence()
        for event in self.stub.StreamTranscribe(requests, timeout=timeout or self.timeout,
                                                metadata=self._md(request_id)):
            yield seq.check(event)

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """SERVING, NOT_SERVING, ... as reported by grpc.health.v1."""
        reply = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Poll health until SERVING (True) or `timeout` (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.health(timeout=max(0.1, min(2.0, deadline - time.monotonic()))) == "SERVING":
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        return False


class AsyncGuardClient:
    """asyncio client (`grpc.aio`): the same calls as GuardClient, awaited."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                 private_key: bytes | None = None, server_name: str | None = None, timeout: float | None = None,
                 max_message_bytes: int = 64 * 1024 * 1024):
        options, creds, self._metadata = _channel_args(
            address, token=token, root_certificates=root_certificates, certificate_chain=certificate_chain,
            private_key=private_key, tls=tls, server_name=server_name, max_message_bytes=max_message_bytes)
        self.channel = (grpc.aio.secure_channel(address, creds, options=options) if creds
                        else grpc.aio.insecure_channel(address, options=options))
        self.stub = guard_pb2_grpc.GuardStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout

    async def __aenter__(self) -> AsyncGuardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def _md(self, request_id: str | None):
        return self._metadata + ((("x-request-id", request_id),) if request_id else ())

    async def transcribe(self, audio, *, sample_rate: int | None = None, channels: int = 1,
                         timeout: float | None = None, request_id: str | None = None,
                         **options) -> pb.TranscribeResponse:
        request = pb.TranscribeRequest(options=make_options(**options),
                                       **audio_fields(audio, sample_rate=sample_rate, channels=channels))
        return await self.stub.Transcribe(request, timeout=timeout or self.timeout, metadata=self._md(request_id))

    async def verify(self, audio, transcript: Iterable, *, sample_rate: int | None = None, channels: int = 1,
                     timeout: float | None = None, request_id: str | None = None, **options) -> pb.VerifyResponse:
        request = pb.VerifyRequest(transcript=transcript_segments(transcript), options=make_options(**options),
                                   **audio_fields(audio, sample_rate=sample_rate, channels=channels))
        return await self.stub.Verify(request, timeout=timeout or self.timeout, metadata=self._md(request_id))

    async def stream(self, chunks: Iterable[bytes] | AsyncIterator[bytes], *, sample_rate: int, channels: int = 1,
                     timeout: float | None = None, request_id: str | None = None,
                     **options) -> AsyncIterator[pb.SegmentEvent]:
        """Stream PCM16 pieces (a sync or async iterable); yields SegmentEvents as they arrive."""
        opts = make_options(**options)

        async def requests():
            yield pb.AudioChunk(config=pb.StreamConfig(options=opts, sample_rate=sample_rate, channels=channels))
            if hasattr(chunks, "__aiter__"):
                async for chunk in chunks:
                    yield pb.AudioChunk(pcm16=bytes(chunk))
            else:
                for chunk in chunks:
                    yield pb.AudioChunk(pcm16=bytes(chunk))

        seq = _Sequence()
        call = self.stub.StreamTranscribe(requests(), timeout=timeout or self.timeout, metadata=self._md(request_id))
        async for event in call:
            yield seq.check(event)

    async def health(self, service: str = "", timeout: float = 5.0) -> str:
        reply = await self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


# ---- whisper-guard call ---------------------------------------------------------------------------


def add_call_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="audio file to send (any format the server decodes)")
    parser.add_argument("--address", default=os.environ.get("WHISPER_GUARD_ADDRESS", DEFAULT_ADDRESS),
                        help="server host:port [env WHISPER_GUARD_ADDRESS; default %(default)s]")
    parser.add_argument("--token", default=os.environ.get("WHISPER_GUARD_TOKEN"),
                        help="bearer token [env WHISPER_GUARD_TOKEN]")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    tls.add_argument("--tls-ca", type=Path, help="CA certificate that signed the server's (implies --tls)")
    tls.add_argument("--tls-cert", type=Path, help="client certificate for mTLS")
    tls.add_argument("--tls-key", type=Path, help="client key for mTLS")
    tls.add_argument("--server-name", help="expected name in the server certificate, if not the host")
    opts = parser.add_argument_group("options (unset = the server's default)")
    opts.add_argument("--model", help="a model name the server serves (e.g. tiny.en, base)")
    opts.add_argument("--language", help="ISO-639-1 code such as en (default: detected)")
    opts.add_argument("--beam-size", type=int, help="1..16")
    opts.add_argument("--policy", choices=sorted(_POLICIES), help="annotate | flag | suppress")
    opts.add_argument("--flag-threshold", type=float, metavar="0..1", help="flag segments scoring at least this")
    opts.add_argument("--suppress-threshold", type=float, metavar="0..1",
                      help="with --policy suppress, drop segments scoring at least this from the text")
    opts.add_argument("--features", action="store_true", help="ask for each segment's signature features")
    opts.add_argument("--word-timestamps", action="store_true", help="ask for each segment's timed, scored words")
    opts.add_argument("--granularity", choices=["segment", "word"], help="what suppress removes from the text")
    mode = parser.add_argument_group("mode")
    mode.add_argument("--verify", type=Path, metavar="TRANSCRIPT",
                      help="score this transcript instead of transcribing: a text file (one segment per line) "
                           "or JSON ([{\"text\", \"start\", \"end\"}, ...])")
    mode.add_argument("--stream", action="store_true", help="decode FILE here and stream it as PCM16")
    mode.add_argument("--chunk-ms", type=float, default=100.0, help="stream piece size (default %(default)s ms)")
    mode.add_argument("--realtime", action="store_true", help="stream at the pace of the audio")
    parser.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    parser.add_argument("--json", action="store_true", help="print the replies as JSON (one per line)")


def to_json(message) -> str:
    """One line of proto3 JSON, every field present (a zero `index` or `start_seconds` too) and
    64-bit integers (`sequence`) as numbers, not strings."""
    return json_format.MessageToJson(message, indent=None, always_print_fields_with_no_presence=True,
                                     unquote_int64_if_possible=True, ensure_ascii=False)


def _read_transcript(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return json.loads(text)
    return [line for line in (ln.strip() for ln in text.splitlines()) if line]


def _print_segment(seg: pb.Segment, out) -> None:
    verdict = VERDICT_NAMES.get(seg.verdict, "?")
    mark = verdict.upper() if seg.verdict != pb.VERDICT_PASS else verdict
    print(f"[{seg.start_seconds:7.2f} -> {seg.end_seconds:7.2f}]  {seg.score:.2f}  {mark:<8}  {seg.text.strip()}",
          file=out, flush=True)
    for w in seg.words:
        verdict = VERDICT_NAMES.get(w.verdict, "?")
        print(f"    [{w.start_seconds:7.2f} -> {w.end_seconds:7.2f}]  {w.score:.2f}  "
              f"{verdict.upper() if w.verdict != pb.VERDICT_PASS else verdict:<8}  {w.word.strip()}", file=out)


def _print_summary(request_id: str, text: str, s: pb.Summary, out) -> None:
    stages = ", ".join(f"{t.stage} {t.seconds:.2f}" for t in s.timings)
    print(f"text: {text}", file=out)
    print(f"{s.model} ({s.language or '?'}), {s.audio_seconds:.1f} s audio, {s.segments} segments "
          f"({s.flagged} flagged, {s.suppressed} suppressed), {s.processing_seconds:.2f} s [{stages}], "
          f"request {request_id}", file=out)


def run_call(args: argparse.Namespace) -> int:
    """`whisper-guard call FILE`: 0 on success, 1 when the server refuses, 2 on a local problem."""
    out = sys.stdout
    try:
        creds = {k: (getattr(args, a).read_bytes() if getattr(args, a) else None)
                 for k, a in (("root_certificates", "tls_ca"), ("certificate_chain", "tls_cert"),
                              ("private_key", "tls_key"))}
        transcript = _read_transcript(args.verify) if args.verify else None
        options = dict(model=args.model, language=args.language, beam_size=args.beam_size, policy=args.policy,
                       flag_threshold=args.flag_threshold, suppress_threshold=args.suppress_threshold,
                       return_features=args.features, word_timestamps=args.word_timestamps,
                       granularity=args.granularity)
        if args.stream:
            from guard.audio import decode_file

            from guard.audio import to_pcm16

            # exactly the samples the server decodes from the file (x * 32768, the inverse of its
            # PCM16 / 32768), so `--stream` gives the unary result
            pcm = to_pcm16(decode_file(args.file, max_seconds=24 * 3600))
        else:
            data = Path(args.file).read_bytes()
    except (OSError, ValueError, KeyError) as e:
        print(f"whisper-guard call: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - guard.errors.AudioError from local decoding
        print(f"whisper-guard call: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    with GuardClient(args.address, token=args.token, tls=args.tls, server_name=args.server_name,
                     timeout=args.timeout, **creds) as client:
        try:
            if args.stream:
                chunks = pcm16_chunks(pcm, chunk_seconds=args.chunk_ms / 1000, realtime=args.realtime)
                for event in client.stream(chunks, sample_rate=16000, **options):
                    if args.json:
                        print(to_json(event), file=out, flush=True)
                    elif event.WhichOneof("event") == "segment":
                        _print_segment(event.segment, out)
                    else:
                        _print_summary(event.request_id, event.summary.text, event.summary.summary, out)
                return 0
            reply = (client.verify(data, transcript, **options) if transcript is not None
                     else client.transcribe(data, **options))
        except grpc.RpcError as e:
            rid = request_id_of(e)
            print(f"error: {e.code().name}: {e.details()}" + (f" (request id {rid})" if rid else ""), file=sys.stderr)
            if e.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (e.details() or "").lower():
                print(f"hint: no whisper-guard server answers at {args.address}; start one with `whisper-guard serve` "
                      "(or give --address HOST:PORT)", file=sys.stderr)
            return 1
    if args.json:
        print(to_json(reply), file=out)
        return 0
    for seg in reply.segments:
        _print_segment(seg, out)
    _print_summary(reply.request_id, reply.text, reply.summary, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.client", description="Call a whisper-guard server.")
    add_call_arguments(parser)
    return run_call(parser.parse_args(argv))


if __name__ == "__main__":  # run the importable module, not a __main__ copy (logger names, classes)
    from guard.client import main as _main

    raise SystemExit(_main())

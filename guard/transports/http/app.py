"""The OpenAI-compatible HTTP API as a Starlette app on the shared serving core.

Routes: POST /v1/audio/transcriptions (OpenAI's form; `stream=true` answers server-sent events),
POST /v1/audio/verify (the guard's own: audio plus a transcript), GET /v1/models[/{id}],
GET /healthz (alive) and /readyz (model loaded, not draining). `/metrics` stays on its own port.

The transcription endpoint hands the parsed form to one function, `transcribe(serving, call,
form, emit)` (default `guard_transcribe`), that runs inside the admitted call on a worker thread;
`create_app(..., transcribe=...)` swaps it (e.g. for a proxy that transcribes elsewhere and
verifies here). `emit(segments)` is given for `stream=true` and sends segments as events.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import anyio
import anyio.from_thread
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from guard.asr import WINDOW_SAMPLES
from guard.errors import BadRequest, GuardError
from guard.intake import EncodedAudio
from guard.results import GuardResult, ScoredSegment
from guard.serving.auth import Tokens
from guard.serving.call import REQUEST_ID_KEY, Call, Outcome
from guard.serving.core import Serving
from guard.transports.http import formats
from guard.transports.http.errors import STATUS, error_body, error_response, outcome_response
from guard.transports.http.forms import FormError, TranscriptionForm, transcription_form, verify_form
from guard.transports.http.multipart import UnsupportedMedia, read_parts

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "x-request-timeout"  # seconds the client waits; past it work stops (504)
DRAIN_LIMIT = 64 * 1024 * 1024  # an over-cap body is read and dropped up to this, so the 413 arrives
METHODS = {"/v1/audio/transcriptions": "Transcribe", "/v1/audio/verify": "Verify"}
EXTRA_THREADS = 4

TranscribeFn = Callable[[Serving, Call, TranscriptionForm, Callable[[list[ScoredSegment]], None] | None], GuardResult]


# ---- the default transcription: the guard's own pipeline ---------------------------------------------


def guard_transcribe(serving: Serving, call: Call, form: TranscriptionForm,
                     emit: Callable[[list[ScoredSegment]], None] | None) -> GuardResult:
    """Transcribe and guard `form.audio`; with `emit`, segments go out as each 30 s window is final."""
    source = EncodedAudio(form.audio, serving.settings.max_audio_seconds)
    if emit is None:
        return serving.infer(call, lambda guard, cancel: guard.transcribe(source, form.options, cancel))
    samples, decoded = serving.infer(call, lambda guard, _cancel: guard.decode(source))
    session = serving.guard.open_stream(form.options)
    emit([])  # the audio decoded: the stream starts (errors before this are plain HTTP errors)
    for lo in range(0, len(samples), WINDOW_SAMPLES):
        piece = samples[lo:lo + WINDOW_SAMPLES]
        emit(serving.infer(call, lambda _guard, cancel: session.feed(piece, cancel)))
    result = serving.infer(call, lambda _guard, cancel: session.finish(cancel))
    emit(result.segments)
    result.segments = list(session.emitted)
    result.timings = {**decoded, **result.timings}
    return result


# ---- the door: auth and the body cap, before any body is read ---------------------------------------


class BodyTooLarge(BadRequest):
    pass


class Door:
    """ASGI middleware for /v1/: bearer token (401), declared size (413 before reading), and a
    receive() that counts bytes and stops at the cap (for chunked bodies)."""

    def __init__(self, app, serving: Serving, tokens: Tokens, max_bytes: int):
        self.app, self.serving, self.tokens, self.max_bytes = app, serving, tokens, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = METHODS.get(scope["path"], "other")
        if self.tokens:
            problem = self.tokens.problem(headers.get("authorization"), "header")
            if problem is not None:
                self.serving.refused(method, Outcome.unauthenticated)
                await _drain(receive, DRAIN_LIMIT)
                response = error_response(401, problem, "invalid_request_error", "invalid_api_key",
                                          headers={"WWW-Authenticate": 'Bearer realm="whisper-guard"'})
                return await response(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            self.serving.refused(method, Outcome.bad_request)
            if int(declared) <= self.max_bytes + DRAIN_LIMIT:
                await _drain(receive, DRAIN_LIMIT + self.max_bytes)
            return await _too_large(self.max_bytes)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(f"request body over {self.max_bytes} bytes")
            return message

        scope.setdefault("state", {})["guard_receive"] = receive
        return await self.app(scope, counted, send)


def _too_large(max_bytes: int, request_id: str | None = None) -> JSONResponse:
    return error_response(413, f"request body too large: the limit is {max_bytes} bytes (max_message_bytes)",
                          "invalid_request_error", "request_too_large", param="file", request_id=request_id)


async def _drain(receive, limit: int) -> None:
    """Read and drop the rest of a body (up to `limit` bytes) so the client reads our answer."""
    dropped = 0
    while dropped <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


# ---- the app -----------------------------------------------------------------------------------------


def _timeout(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise FormError(f"{TIMEOUT_HEADER} must be seconds (a number > 0); got {raw[:20]!r}", TIMEOUT_HEADER) from None
    if not value > 0:
        raise FormError(f"{TIMEOUT_HEADER} must be > 0 seconds; got {raw[:20]!r}", TIMEOUT_HEADER)
    return value


class _Watch:
    """Sets `gone` when the client disconnects (reads receive() once the body is consumed)."""

    def __init__(self, receive):
        self.receive, self.gone = receive, threading.Event()

    async def run(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return


def create_app(serving: Serving, *, transcribe: TranscribeFn = guard_transcribe) -> Starlette:
    settings = serving.settings
    tokens = Tokens([t.get_secret_value() for t in settings.auth_tokens])
    limiter = anyio.CapacityLimiter(settings.max_concurrent + settings.max_queued + EXTRA_THREADS)

    def served() -> dict[str, str]:
        guard = serving.guard
        if guard is None:
            return {}
        return {name: str(b.resolved.path) for name, b in guard.bundles.items()}

    async def begin(request: Request, method: str) -> tuple[Call, _Watch]:
        watch = _Watch(request.receive)
        call = serving.begin(method, offered_id=request.headers.get(REQUEST_ID_KEY),
                             is_active=lambda: not watch.gone.is_set())
        return call, watch

    def failed(call: Call, err: Exception) -> Response:
        if isinstance(err, BodyTooLarge):
            serving.fail(call, err)
            return _too_large(settings.max_message_bytes, call.request_id)
        serving.fail(call, err)
        if isinstance(err, UnsupportedMedia):
            return error_response(415, call.message, "invalid_request_error", "unsupported_media_type",
                                  request_id=call.request_id)
        return outcome_response(call.outcome, call.message, call.request_id, getattr(err, "param", None))

    async def read_form(request: Request, call: Call, parse):
        try:
            call.deadline = None if (t := _timeout(request)) is None else call.started + t
            parts = await read_parts(request.headers.get("content-type"), request.stream())
            return parse(parts, served()), None
        except BodyTooLarge as e:
            await _drain(request.scope["state"]["guard_receive"], DRAIN_LIMIT)
            return None, failed(call, e)
        except GuardError as e:
            return None, failed(call, e)

    async def run_unary(call: Call, watch: _Watch, work) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run)
            await anyio.to_thread.run_sync(serving.unary, call, work, limiter=limiter)
            tg.cancel_scope.cancel()

    async def transcriptions(request: Request) -> Response:
        call, watch = await begin(request, "Transcribe")
        form, problem = await read_form(request, call, transcription_form)
        if problem is not None:
            return problem
        if form.stream:
            return _EventStream(serving, call, watch, form, transcribe, limiter)
        rendered: dict = {}

        def work(c: Call):
            result = transcribe(serving, c, form, None)
            rendered["body"] = formats.render(form.response_format, result, c.processing(), c.queued,
                                              form.granularities, form.options.return_features, c.inference)
            return result, True

        await run_unary(call, watch, work)
        if call.outcome is not Outcome.ok:
            return outcome_response(call.outcome, call.message, call.request_id)
        body, media = rendered["body"]
        return Response(body, media_type=media, headers={REQUEST_ID_KEY: call.request_id})

    async def verify(request: Request) -> Response:
        call, watch = await begin(request, "Verify")
        form, problem = await read_form(request, call, verify_form)
        if problem is not None:
            return problem
        out: dict = {}

        def work(c: Call):
            source = EncodedAudio(form.audio, settings.max_audio_seconds)
            result = serving.infer(c, lambda guard, cancel: guard.verify(source, form.transcript, form.options, cancel))
            body = formats.verbose(result, c.processing(), c.queued, ["segment"], task="verify", inference=c.inference)
            out["body"] = body if form.verbose else {"text": body["text"], "guard": body["guard"]}
            return result, True

        await run_unary(call, watch, work)
        if call.outcome is not Outcome.ok:
            return outcome_response(call.outcome, call.message, call.request_id)
        return JSONResponse(out["body"], headers={REQUEST_ID_KEY: call.request_id})

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "whisper-guard"}

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card(m) for m in served()]})

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        available = served()
        if name not in available:
            return error_response(404, f"model {name!r} is not served here; available: {', '.join(available) or 'none yet'}",
                                  "invalid_request_error", "model_not_found", param="model")
        return JSONResponse(model_card(name))

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_request: Request) -> Response:
        if serving.ready:
            return PlainTextResponse("ready\n")
        why = ("draining" if serving.admission.closed else
               f"model failed to load: {serving.load_error}" if serving.load_error else "model loading")
        return PlainTextResponse(f"not ready: {why}\n", status_code=503)

    app = Starlette(routes=[
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/verify", verify, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ], exception_handlers={404: _not_found, 405: _not_allowed})
    app.add_middleware(Door, serving=serving, tokens=tokens, max_bytes=settings.max_message_bytes)
    return app


async def _not_found(_request, _exc) -> Response:
    return error_response(404, "no such endpoint; see /v1/audio/transcriptions, /v1/audio/verify, /v1/models",
                          "invalid_request_error", "not_found")


async def _not_allowed(request, _exc) -> Response:
    return error_response(405, f"method {request.method} is not allowed here", "invalid_request_error",
                          "method_not_allowed")


class _EventStream(Response):
    """`stream=true`: the worker thread emits segments; they go out as SSE events. Errors before the
    first event are ordinary HTTP errors; after it, an OpenAI-shaped `{"error": ...}` event."""

    def __init__(self, serving: Serving, call: Call, watch: _Watch, form: TranscriptionForm, transcribe, limiter):
        self.serving, self.call, self.watch, self.form, self.transcribe, self.limiter = \
            serving, call, watch, form, transcribe, limiter
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        call = self.call
        send_events, events = anyio.create_memory_object_stream(64)

        def emit(segments: list[ScoredSegment]) -> None:
            anyio.from_thread.run(send_events.send, ("segments", segments))

        def work(c: Call):
            self._result = self.transcribe(self.serving, c, self.form, emit)
            return self._result, True

        def produce() -> None:
            try:
                self.serving.unary(call, work)
            finally:
                anyio.from_thread.run_sync(send_events.close)

        async def start() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (REQUEST_ID_KEY.encode(), call.request_id.encode())]})

        first = True

        async def events_of(segments: list[ScoredSegment]) -> None:
            nonlocal first
            events, first = formats.segment_events(segments, first)
            body = b"".join(formats.sse(e) for e in events)
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})

        async def run_worker() -> None:
            await anyio.to_thread.run_sync(produce, limiter=self.limiter)

        async with anyio.create_task_group() as tg:
            tg.start_soon(self.watch.run)
            tg.start_soon(run_worker)
            opened = False
            async with events:
                async for _kind, segments in events:
                    if not opened:
                        opened = True
                        await start()
                    await events_of(segments)
            if not opened and call.outcome is not Outcome.ok:  # failed before the stream started
                response = outcome_response(call.outcome or Outcome.internal, call.message, call.request_id)
                await response(scope, receive, send)
            else:
                if not opened:  # a transcribe function that emitted nothing: everything at the end
                    await start()
                    await events_of(self._result.segments if self._result else [])
                if call.outcome is Outcome.ok:
                    tail = formats.sse(formats.done_event(self._result, call.processing(), call.queued))
                else:
                    _status, type_, code = STATUS.get(call.outcome, STATUS[Outcome.internal])
                    tail = formats.sse(error_body(call.message, type_, code))
                await send({"type": "http.response.body", "body": tail, "more_body": False})
            tg.cancel_scope.cancel()

    _result: GuardResult | None = None

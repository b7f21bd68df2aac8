"""Run the guard as a gRPC server: admission control, auth, TLS, health, reflection, drain.

`whisper-guard serve` (or `python -m guard.server`) listens at once and reports NOT_SERVING
on `grpc.health.v1` while the model loads (Guard RPCs answer UNAVAILABLE), then SERVING.
Up to `max_concurrent` requests run inference while `max_queued` more wait, in arrival order;
anyone beyond that gets RESOURCE_EXHAUSTED immediately. An open stream holds one of those
`max_concurrent + max_queued` places for its lifetime and an inference slot only while its
audio is being decoded. On SIGTERM (or SIGINT) health turns NOT_SERVING, new calls get
UNAVAILABLE, calls in flight get `grace_seconds` to finish (then are cancelled), and the
process exits 0. A second signal cuts the grace period short.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import logging
import os
import signal
import sys
import threading
import time
import types
import typing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from enum import Enum
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import SecretStr, ValidationError

from guard.config import Settings
from guard.errors import Cancelled, GuardError
from guard.service import SERVICE_NAME, GuardService, add_to_server

log = logging.getLogger(__name__)

EXTRA_WORKERS = 4  # threads beyond the admission places: health, reflection, fast rejections
HEALTH_EXEMPT = "/grpc.health.v1.Health/"  # probes (kubelet) cannot send tokens
HARD_STOP_WAIT_S = 10.0  # after the grace period: how long cancelled calls get to unwind
# HTTP/2 keepalive from the server: a peer that stops answering pings (host gone, network cut,
# frozen process) is dropped after KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS and its calls are
# cancelled, so a dead client's stream cannot hold an admission place for hours (gRPC's default
# is a first ping after 2 h, and no more than 2 pings while no data flows).
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000


class ServeError(Exception):
    """A configuration the server cannot start with (bad address, unreadable TLS file, ...)."""


# ---- admission ---------------------------------------------------------------------------------


class Admission:
    """`max_concurrent` inference slots plus `max_queued` waiting places; FIFO; no waiting beyond.

    `admit()` hands out a Ticket (a place) or None at once. A ticket's `slot(cancel)` waits for
    an inference slot in arrival order and gives up when `cancel()` turns true, so a cancelled
    or expired call leaves the queue instead of holding it.
    """

    def __init__(self, max_concurrent: int, max_queued: int, metrics=None):
        self.max_concurrent, self.max_queued = max_concurrent, max_queued
        self.metrics = metrics
        self.closed = False
        self._cond = threading.Condition()
        self._admitted = 0
        self._running = 0
        self._waiting: deque[object] = deque()
        if metrics:
            metrics.set_limits(max_concurrent, max_queued)

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def admit(self) -> Ticket | None:
        """A place, or None when all are taken or admission is closed (draining)."""
        with self._cond:
            if self.closed or self._admitted >= self.max_concurrent + self.max_queued:
                return None
            self._admitted += 1
            return Ticket(self)

    def close(self) -> None:
        with self._cond:
            self.closed = True

    def wait_idle(self, timeout: float) -> bool:
        """Until no ticket is out (True) or `timeout` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._admitted == 0, timeout=max(0.0, timeout))

    def _acquire(self, cancel: Callable[[], bool]) -> float:
        t0 = time.monotonic()
        me = object()
        with self._cond:
            self._waiting.append(me)
            self._gauges()
            try:
                while self._running >= self.max_concurrent or self._waiting[0] is not me:
                    if cancel():
                        raise Cancelled("the call ended while waiting for an inference slot")
                    self._cond.wait(0.05)
                self._running += 1
            finally:
                self._waiting.remove(me)
                self._gauges()
                self._cond.notify_all()
        return time.monotonic() - t0

    def _release(self) -> None:
        with self._cond:
            self._running -= 1
            self._gauges()
            self._cond.notify_all()

    def _leave(self) -> None:
        with self._cond:
            self._admitted -= 1
            self._cond.notify_all()

    def _gauges(self) -> None:
        if self.metrics:
            self.metrics.in_flight.set(self._running)
            self.metrics.queued.set(len(self._waiting))


class Ticket:
    """One admitted request (or open stream)."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._released = False

    @contextlib.contextmanager
    def slot(self, cancel: Callable[[], bool]) -> Iterator[float]:
        """Hold an inference slot for the block; yields the seconds spent waiting for it."""
        waited = self._admission._acquire(cancel)
        try:
            yield waited
        finally:
            self._admission._release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._leave()


# ---- auth ----------------------------------------------------------------------------------------


class BearerAuth(grpc.ServerInterceptor):
    """Every call but health must carry `authorization: Bearer <token>` with an accepted token.

    Tokens are compared in constant time (each against every accepted one) and never logged. Both
    sides are SHA-256 digests, so the comparison does not even reveal an accepted token's length.
    """

    def __init__(self, tokens: list[str], metrics=None):
        self._tokens = [hashlib.sha256(t.encode()).digest() for t in tokens if t]
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_EXEMPT):
            return handler
        problem = self._problem(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        if self._metrics:
            self._metrics.observe_request(handler_call_details.method.rsplit("/", 1)[-1], "UNAUTHENTICATED", 0.0)
        return _refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, problem)

    def _problem(self, metadata) -> str | None:
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return "missing credentials: send the metadata `authorization: Bearer <token>`"
        scheme, _, token = str(values[0]).strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed `authorization` metadata: expected `Bearer <token>`"
        given, ok = hashlib.sha256(token.strip().encode()).digest(), False
        for accepted in self._tokens:
            ok |= hmac.compare_digest(given, accepted)
        return None if ok else "the bearer token is not accepted by this server"


def _refusing_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str):
    """A handler of the same shape as `handler` that fails the call with `code`."""

    def refuse(_request, context):
        context.abort(code, details)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


# ---- the server ----------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ServeError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when `tls_client_ca` is set) from the settings; None for plaintext."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_client_ca:
            raise ServeError("tls_client_ca (mTLS) needs tls_cert and tls_key as well")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ServeError("TLS needs both tls_cert and tls_key")
    pair = (_read(settings.tls_key, "TLS key"), _read(settings.tls_cert, "TLS certificate"))
    ca = _read(settings.tls_client_ca, "client CA") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class GuardServer:
    """The gRPC server around one shared Guard. `start()`, then `drain()` or `stop()`.

    Without `guard`, `start()` runs `load(settings)` (default: `guard.pipeline.Guard`) on a
    background thread while health says NOT_SERVING. Pass `guard` to serve an already loaded
    pipeline (tests share one between servers); it keeps its own model and policy settings.
    """

    def __init__(self, settings: Settings, *, guard=None, metrics=None, load: Callable[[Settings], object] | None = None):
        self.settings = settings
        self.metrics = metrics
        self.admission = Admission(settings.max_concurrent, settings.max_queued, metrics)
        self.service = GuardService(settings, self.admission, metrics)
        self.health = health.HealthServicer()
        self.loaded = threading.Event()
        self._guard, self._load_guard = guard, load
        credentials = server_credentials(settings)
        tokens = [t.get_secret_value() for t in settings.auth_tokens]
        workers = settings.max_concurrent + settings.max_queued + EXTRA_WORKERS
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guard-rpc"),
            interceptors=[BearerAuth(tokens, metrics)] if tokens else [],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),  # what bounds the wait in grpc 1.85
            ],
        )
        add_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.tls = credentials is not None
        self.port = self._bind(settings.address, credentials)
        host = settings.address.rpartition(":")[0] or "0.0.0.0"
        self.address = f"{host}:{self.port}"
        if tokens and not self.tls and host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
            log.warning("bearer tokens over plaintext on %s: anyone on the path can read them; configure TLS", host)

    def _bind(self, address: str, credentials) -> int:
        try:
            port = (self._server.add_secure_port(address, credentials) if credentials
                    else self._server.add_insecure_port(address))
        except RuntimeError as e:
            raise ServeError(f"cannot listen on {address!r} ({e}); is the port taken or the host wrong?") from None
        if not port:
            raise ServeError(f"cannot listen on {address!r}; is the port taken or the host wrong?")
        return port

    def _set_health(self, status) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)
        if self.metrics:
            self.metrics.set_serving(status == health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> GuardServer:
        self._server.start()
        log.info("whisper-guard listening on %s (tls=%s, mtls=%s, auth=%s, max_concurrent=%d, max_queued=%d)",
                 self.address, self.tls, bool(self.settings.tls_client_ca), bool(self.settings.auth_tokens),
                 self.settings.max_concurrent, self.settings.max_queued)
        if self._guard is not None:
            self._ready(self._guard)
        else:
            threading.Thread(target=self._load, name="guard-model-load", daemon=True).start()
        return self

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            if self._load_guard is None:
                from guard.pipeline import Guard

                fallback = self.metrics.fallback if self.metrics else None
                self._load_guard = lambda settings: Guard(settings, on_fallback=fallback)
            guard = self._load_guard(self.settings)
        except Exception as e:  # noqa: BLE001 - reported on health, in the log and to callers
            self.service.load_error = f"{type(e).__name__}: {e}"
            # a GuardError (missing package, checksum mismatch, bad calibration) says what to do in
            # one line; anything else is a bug and gets its traceback
            log.error("cannot serve: the model failed to load: %s", e if isinstance(e, GuardError)
                      else self.service.load_error, exc_info=not isinstance(e, GuardError))
            self.loaded.set()
            return
        log.info("model loaded in %.1f s", time.monotonic() - t0)
        self._ready(guard)

    def _ready(self, guard) -> None:
        self.service.guard = guard
        if self.metrics:
            from importlib import metadata

            try:
                from guard import DISTRIBUTION

                version = metadata.version(DISTRIBUTION)
            except metadata.PackageNotFoundError:
                version = "dev"
            self.metrics.set_model_info(list(guard.model_names), guard.device, version)
        if not self.admission.closed:
            self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING models %s on %s", ", ".join(guard.model_names), guard.device)
        self.loaded.set()

    def drain(self, grace: float | None = None) -> bool:
        """Graceful stop: NOT_SERVING, refuse new calls, let calls in flight finish within
        `grace` seconds (default `grace_seconds`), cancel the rest, stop. True if none was cut."""
        grace = self.settings.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()
        if self.metrics:
            self.metrics.set_serving(False)
        self.admission.close()
        log.info("draining: health NOT_SERVING, new calls refused, %d in flight get up to %.1f s",
                 self.admission.admitted, grace)
        clean = self.admission.wait_idle(grace)
        if not clean:
            log.warning("grace period over with %d calls in flight; cancelling them", self.admission.admitted)
            self.service.hard_stop.set()
            self.admission.wait_idle(HARD_STOP_WAIT_S)
        self._server.stop(grace=1.0).wait()
        log.info("stopped")
        return clean

    def stop(self, grace: float | None = 0) -> None:
        """Stop now (in-flight calls are cancelled after `grace` seconds)."""
        self.health.enter_graceful_shutdown()
        self.admission.close()
        self.service.hard_stop.set()
        self._server.stop(grace).wait()


# ---- CLI -----------------------------------------------------------------------------------------


def _unwrap(annotation):
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; a flag given beats its `WHISPER_GUARD_*` env var."""
    for name, field in Settings.model_fields.items():
        ann = _unwrap(field.annotation)
        env = f"WHISPER_GUARD_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        flags = ["--" + name.replace("_", "-")]
        kw: dict = {"dest": name, "default": argparse.SUPPRESS}
        if name == "max_concurrent":
            flags.append("--workers")
        if typing.get_origin(ann) is list:
            item = _unwrap(typing.get_args(ann)[0])
            if name == "auth_tokens":
                flags = ["--auth-token"]
                default = "none"
                env += ' (JSON list: \'["t1","t2"]\'; prefer it or --auth-token-file: flags show in `ps`)'
            kw.update(action="append", type=str if item in (SecretStr, Path) else item, metavar=name[:-1].upper())
        elif ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(ann, type) and issubclass(ann, Enum):
            kw["choices"] = [m.value for m in ann]
            default = default.value if isinstance(default, Enum) else default
        else:
            kw["type"] = str if ann in (Path, SecretStr) else ann
            kw["metavar"] = name.upper()
        text = f"{field.description or name.replace('_', ' ')} [env {env}; default {default}]"
        kw["help"] = text.replace("%", "%%")
        parser.add_argument(*flags, **kw)
    parser.add_argument("--auth-token-file", type=Path, default=None, metavar="PATH",
                        help="read accepted bearer tokens from a file, one per line (adds to --auth-token)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    token_file = getattr(args, "auth_token_file", None)
    if token_file:
        lines = [ln.strip() for ln in _read(token_file, "token file").decode().splitlines()]
        tokens = [ln for ln in lines if ln and not ln.startswith("#")]
        if not tokens:
            raise ServeError(f"token file {str(token_file)!r} holds no token")
        values["auth_tokens"] = list(values.get("auth_tokens", [])) + tokens
    return Settings(**values)


def _configure_logging() -> None:
    """A server logs its start, readiness, drain and one line per request at INFO (env
    WHISPER_GUARD_LOG_LEVEL changes that), whatever the CLI set up for one-shot commands."""
    level = os.environ.get("WHISPER_GUARD_LOG_LEVEL", "INFO").upper()
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("guard").setLevel(level)


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then drain; 0 on a clean stop, 1 when it cannot start or load."""
    from guard.metrics import GuardMetrics, start_metrics_server

    metrics = GuardMetrics()
    try:
        server = GuardServer(settings, metrics=metrics)
        metrics_server = start_metrics_server(metrics, settings.metrics_address) if settings.metrics_address else None
    except (ServeError, ValueError, OSError) as e:
        log.error("cannot start: %s", e)
        return 1
    stop = threading.Event()

    def on_signal(signum, _frame):
        if stop.is_set():
            log.warning("second %s: cancelling calls in flight now", signal.Signals(signum).name)
            server.service.hard_stop.set()
        else:
            log.info("%s received: draining", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if metrics_server:
            log.info("metrics at %s", metrics_server.url)
        while not stop.wait(0.25):
            if server.loaded.is_set() and server.service.load_error:
                log.error("exiting with status 1 (health was NOT_SERVING): fix the model setup and restart")
                server.stop(0)
                return 1
        server.drain()
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if metrics_server:
            metrics_server.shutdown()


def run_serve(args: argparse.Namespace) -> int:
    """`whisper-guard serve`: settings from flags and env, then `serve`."""
    _configure_logging()
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        print(f"whisper-guard serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    except ServeError as e:
        print(f"whisper-guard serve: {e}", file=sys.stderr)
        return 2
    return serve(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.server", description="Serve whisper-guard over gRPC.")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":  # run the importable module, not a __main__ copy (logger names, classes)
    from guard.server import main as _main

    raise SystemExit(_main())

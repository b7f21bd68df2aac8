"""The gRPC server: whisperguard.v1.Guard plus health and reflection, bearer auth, TLS, keepalive.

It listens at once and reports NOT_SERVING on `grpc.health.v1` while the serving core loads the
model (Guard RPCs answer UNAVAILABLE), then SERVING. Admission, the drain and the model are the
serving core's (`guard.serving.Serving`), shared with the HTTP transport when both run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from guard.config import Settings
from guard.serving.auth import Tokens
from guard.serving.call import Outcome
from guard.serving.core import Serving
from guard.serving.tls import ServeError, tls_files
from guard.transports.grpc.servicer import SERVICE_NAME, GuardService, add_to_server

log = logging.getLogger(__name__)

EXTRA_WORKERS = 4  # threads beyond the admission places: health, reflection, fast rejections
HEALTH_EXEMPT = "/grpc.health.v1.Health/"  # probes (kubelet) cannot send tokens
# HTTP/2 keepalive from the server: a peer that stops answering pings (host gone, network cut,
# frozen process) is dropped after KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS and its calls are
# cancelled, so a dead client's stream cannot hold an admission place for hours (gRPC's default
# is a first ping after 2 h, and no more than 2 pings while no data flows).
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000


# ---- auth ----------------------------------------------------------------------------------------


class BearerAuth(grpc.ServerInterceptor):
    """Every call but health must carry `authorization: Bearer <token>` with an accepted token
    (checked by `guard.serving.auth.Tokens`: SHA-256 digests, constant time, never logged)."""

    def __init__(self, tokens: list[str], metrics=None, serving: Serving | None = None):
        self._check = Tokens(tokens)
        self._metrics = metrics
        self._serving = serving

    @property
    def _tokens(self) -> list[bytes]:
        return self._check.digests

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_EXEMPT):
            return handler
        problem = self._problem(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if self._serving is not None:
            self._serving.refused(method, Outcome.unauthenticated)
        elif self._metrics:
            self._metrics.observe_request(method, "UNAUTHENTICATED", 0.0)
        return _refusing_handler(handler, grpc.StatusCode.UNAUTHENTICATED, problem)

    def _problem(self, metadata) -> str | None:
        values = [v for k, v in metadata or () if k == "authorization"]
        return self._check.problem(str(values[0]) if values else None, "metadata")


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


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS when `tls_client_ca` is set) from the settings; None for plaintext."""
    files = tls_files(settings)
    if files is None:
        return None
    ca = files.client_ca_pem
    return grpc.ssl_server_credentials([(files.key_pem, files.cert_pem)], root_certificates=ca,
                                       require_client_auth=ca is not None)


class GuardServer:
    """The gRPC server on a serving core. `start()`, then `drain()` or `stop()`.

    Without `serving`, it makes its own core (`Serving(settings, metrics)`). Without `guard`,
    `start()` has the core run `load(settings)` (default: `guard.pipeline.Guard`) on a background
    thread while health says NOT_SERVING. Pass `guard` to serve an already loaded pipeline (tests
    share one between servers); it keeps its own model and policy settings.
    """

    def __init__(self, settings: Settings, *, guard=None, metrics=None, load: Callable[[Settings], object] | None = None,
                 serving: Serving | None = None):
        self.settings = settings
        self.serving = serving if serving is not None else Serving(settings, metrics)
        self.metrics = self.serving.metrics
        self.admission = self.serving.admission
        self.service = GuardService(self.serving)
        self.health = health.HealthServicer()
        self.loaded = self.serving.loaded
        self._guard, self._load_guard = guard, load
        credentials = server_credentials(settings)
        tokens = [t.get_secret_value() for t in settings.auth_tokens]
        workers = settings.max_concurrent + settings.max_queued + EXTRA_WORKERS
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guard-rpc"),
            interceptors=[BearerAuth(tokens, serving=self.serving)] if tokens else [],
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
        self.tls = credentials is not None
        self.port = self._bind(settings.address, credentials)
        host = settings.address.rpartition(":")[0] or "0.0.0.0"
        self.address = f"{host}:{self.port}"
        if tokens and not self.tls and host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
            log.warning("bearer tokens over plaintext on %s: anyone on the path can read them; configure TLS", host)
        self.serving.on_serving(self._on_serving)

    def _bind(self, address: str, credentials) -> int:
        try:
            port = (self._server.add_secure_port(address, credentials) if credentials
                    else self._server.add_insecure_port(address))
        except RuntimeError as e:
            raise ServeError(f"cannot listen on {address!r} ({e}); is the port taken or the host wrong?") from None
        if not port:
            raise ServeError(f"cannot listen on {address!r}; is the port taken or the host wrong?")
        return port

    def _on_serving(self, serving: bool) -> None:
        if serving:
            status = health_pb2.HealthCheckResponse.SERVING
        elif self.admission.closed:
            self.health.enter_graceful_shutdown()
            return
        else:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> GuardServer:
        self._server.start()
        log.info("whisper-guard listening on %s (tls=%s, mtls=%s, auth=%s, max_concurrent=%d, max_queued=%d)",
                 self.address, self.tls, bool(self.settings.tls_client_ca), bool(self.settings.auth_tokens),
                 self.settings.max_concurrent, self.settings.max_queued)
        self.serving.start(self._guard, self._load_guard)
        return self

    def drain(self, grace: float | None = None) -> bool:
        """Graceful stop: NOT_SERVING, refuse new calls, let calls in flight finish within
        `grace` seconds (default `grace_seconds`), cancel the rest, stop. True if none was cut."""
        clean = self.serving.drain(grace)
        self.close()
        return clean

    def close(self, grace: float = 1.0) -> None:
        """Stop listening (after the serving core drained)."""
        self._server.stop(grace=grace).wait()
        log.info("stopped")

    def stop(self, grace: float | None = 0) -> None:
        """Stop now (in-flight calls are cancelled after `grace` seconds)."""
        self.serving.stop()
        self._server.stop(grace).wait()

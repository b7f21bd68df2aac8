"""The HTTP server: uvicorn on its own thread, serving `create_app` on the shared serving core.

The socket is bound in the constructor (a bad or taken address fails at start, like gRPC's;
port 0 picks a free one). TLS (and mTLS) come from the same settings as gRPC's. The drain is the
serving core's: once it closed, /readyz is 503 and new calls get 503; `close()` then stops
uvicorn after the calls in flight have finished.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading

import uvicorn

from guard.config import Settings
from guard.serving.core import Serving
from guard.serving.tls import ServeError, parse_host_port, tls_files
from guard.transports.http.app import TranscribeFn, create_app, guard_transcribe

log = logging.getLogger(__name__)


class HttpServer:
    """`start()`, then `close()` (after the core drained) or `stop()`."""

    def __init__(self, settings: Settings, serving: Serving, *, address: str | None = None,
                 transcribe: TranscribeFn = guard_transcribe, guard=None):
        self.settings, self.serving = settings, serving
        self._guard = guard
        host, port = parse_host_port(address or settings.http_address, "http_address")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise ServeError(f"cannot listen on {host}:{port} for HTTP ({e.strerror or e}); "
                             "is the port taken or the host wrong?") from None
        self._sock.listen(128)
        self._sock.set_inheritable(True)
        self.port = self._sock.getsockname()[1]
        files = tls_files(settings)
        self.tls = files is not None
        config = uvicorn.Config(
            create_app(serving, transcribe=transcribe), log_level="warning", access_log=False, lifespan="off",
            timeout_keep_alive=30, timeout_graceful_shutdown=int(settings.grace_seconds) + 1, server_header=False,
            **({"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key),
                "ssl_ca_certs": str(files.client_ca) if files.client_ca else None,
                "ssl_cert_reqs": ssl.CERT_REQUIRED if files.client_ca else ssl.CERT_NONE} if files else {}))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="guard-http", daemon=True)
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{self.port}"
        self.url = f"{'https' if self.tls else 'http'}://{self.address}"
        if settings.auth_tokens and not self.tls and host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("bearer tokens over plaintext HTTP on %s: anyone on the path can read them; configure TLS", host)

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self) -> HttpServer:
        self._thread.start()
        log.info("whisper-guard HTTP (OpenAI-compatible) listening on %s", self.url)
        self.serving.start(self._guard)
        return self

    def close(self, grace: float = 1.0) -> None:
        """Stop listening and end the server thread (calls in flight are the core's to drain first)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=max(grace, 1.0) + self.settings.grace_seconds + 5)
        self._sock.close()

    def stop(self, grace: float | None = 0) -> None:
        self.serving.stop()
        self._server.force_exit = bool(not grace)
        self.close(grace or 0.0)

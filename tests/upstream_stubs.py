"""Small real HTTP servers on loopback that play broken upstreams: slow, garbage, erroring, recording.

Each is a stdlib ThreadingHTTPServer on 127.0.0.1:0 serving `POST .../audio/transcriptions` with
one behaviour; it records every request it received (path, headers, multipart fields) so a test
can check what was forwarded and that nothing was retried. Used where the real upstream
(faster-whisper-server, tests/peers.py) cannot be made to misbehave on purpose.
"""
from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    fields: list[tuple[str, str]]  # multipart text fields, in order
    files: dict[str, tuple[str, bytes]]  # name -> (filename, bytes)


@dataclass
class Stub:
    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def parse_multipart(content_type: str, body: bytes) -> tuple[list[tuple[str, str]], dict[str, tuple[str, bytes]]]:
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields, files = [], {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is not None:
            files[name] = (filename, payload)
        else:
            fields.append((name, payload.decode("utf-8")))
    return fields, files


# A behaviour: (stub, handler, this request) -> None; it writes the whole answer itself.
Behaviour = Callable[[Stub, BaseHTTPRequestHandler, Received], None]


def answer(status: int, body: bytes, content_type: str = "application/json", delay: float = 0.0) -> Behaviour:
    def run(_stub: Stub, h: BaseHTTPRequestHandler, _r: Received) -> None:
        if delay:
            time.sleep(delay)
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return run


def answer_json(status: int, doc, delay: float = 0.0) -> Behaviour:
    return answer(status, json.dumps(doc).encode(), delay=delay)


def raw(data: bytes) -> Behaviour:
    """Bytes that are not HTTP at all, then close."""
    def run(_stub: Stub, h: BaseHTTPRequestHandler, _r: Received) -> None:
        h.wfile.write(data)
        h.wfile.flush()
        h.close_connection = True
    return run


def hang_up() -> Behaviour:
    """Read the request, then close without a byte of answer (a crash mid-processing)."""
    def run(_stub: Stub, h: BaseHTTPRequestHandler, _r: Received) -> None:
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)
    return run


def verbose(segments: list[tuple[float, float, str]], language: str = "en", duration: float | None = None) -> dict:
    return {"task": "transcribe", "language": language,
            "duration": duration if duration is not None else (segments[-1][1] if segments else 0.0),
            "text": "".join(t for _, _, t in segments),
            "segments": [{"id": i, "seek": 0, "start": s, "end": e, "text": t, "tokens": [], "temperature": 0.0,
                          "avg_logprob": -0.2, "compression_ratio": 1.0, "no_speech_prob": 0.01}
                         for i, (s, e, t) in enumerate(segments)]}


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler whose access log goes to this module's logger at debug level (pytest shows
    it with a failing test) instead of stderr."""
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("stub upstream %s: " + format, self.address_string(), *args)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that gave up mid-request is expected here: logged at debug, not printed."""
        log.debug("stub upstream: request from %s ended with an error", client_address, exc_info=True)


@contextlib.contextmanager
def stub_upstream(behaviour: Behaviour) -> Iterator[Stub]:
    stub_ref: list[Stub] = []

    class Handler(QuietHandler):
        def do_POST(self):  # noqa: N802
            stub = stub_ref[0]
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            fields, files = parse_multipart(self.headers.get("Content-Type", ""), body)
            rec = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, fields, files)
            with stub.lock:
                stub.received.append(rec)
            behaviour(stub, self, rec)

    server = _QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    stub_ref.append(Stub("127.0.0.1", server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield stub_ref[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A loopback port with nothing listening (bound and released: refused on connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

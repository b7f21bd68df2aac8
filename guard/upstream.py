"""Call an upstream OpenAI-compatible transcription service and read its segments.

The verifying proxy (guard/proxy.py) forwards a client's `POST /v1/audio/transcriptions` here:
the same multipart fields, except that the upstream is always asked for `verbose_json` with
segment timestamps (the guard needs segments and times to verify), never for a stream. What
comes back is parsed into `UpstreamTranscript`, or fails as one of three error kinds, each with
the upstream's own message:

| error                 | when                                                        | HTTP |
|-----------------------|-------------------------------------------------------------|------|
| `UpstreamUnavailable` | no connection (refused, unreachable, reset mid-exchange)    | 502  |
| `UpstreamStatus`      | the upstream answered an error status (status, message kept) | 502  |
| `UpstreamTimeout`     | connect, send, the wait for the answer, or a free pooled    | 504  |
|                       | connection took longer than its timeout                     |      |
| `UpstreamBadResponse` | a 2xx answer that is not a verbose_json transcription       | 502  |
|                       | (not JSON, wrong shape, non-finite times, too large)        |      |

Retries, and why only these: a transcription has no side effect, but it is not free to repeat
(billing on a paid API, GPU time on a shared cluster, and a retry storm into an overloaded
upstream makes it worse), and a retried request that had been processed costs the caller the
whole upstream time twice. So a request is retried only when it provably never reached the
upstream: the TCP connect (or TLS handshake) failed or timed out, before a byte of the request
was written. That is httpcore's own transport-level retry (`retries=`, backoff 0 s, 0.5 s, 1 s,
...), which covers exactly those two cases. Nothing is retried once the request may have been
sent: a reset or a close mid-request, a read timeout, a 5xx (the upstream may have done the work;
its 503/429 are for the *client* to retry, with its own backoff). A pooled keep-alive connection
that the upstream closed while idle is detected by httpcore before reuse (it reads as readable
at EOF) and replaced, and connections are dropped after `KEEPALIVE_EXPIRY_S` idle, below the 5 s
keep-alive of uvicorn-based servers, so that race stays rare; when it does happen it surfaces as
UpstreamUnavailable, not as a silent resend.

This module is an outbound client: it imports httpx, never the guard's own transports (gRPC,
the HTTP app); the pipeline does not import it.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guard.errors import GuardError, Kind

KEEPALIVE_EXPIRY_S = 2.0  # idle pooled connections are dropped after this (upstreams often close at 5 s)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # a 30-min verbose_json is well under 1 MiB
MESSAGE_CHARS = 300  # how much of an upstream's error text is carried into ours
ERROR_KINDS = ("unavailable", "status", "timeout", "bad_response")  # the metric's closed label set
# Fields that shape the upstream's answer: the proxy sets them itself, whatever the client sent.
SHAPING_FIELDS = frozenset({"response_format", "timestamp_granularities[]", "timestamp_granularities", "stream"})


class UpstreamError(GuardError):
    """The upstream failed; `upstream` names it, `status` is its HTTP status when it answered."""

    kind = Kind.upstream_failed
    metric_kind = "unavailable"
    http_status = 502

    def __init__(self, message: str, *, upstream: str = "", status: int | None = None):
        super().__init__(message)
        self.upstream = upstream
        self.status = status


class UpstreamUnavailable(UpstreamError):
    """No connection, or an error status from the upstream (502)."""


class UpstreamStatus(UpstreamUnavailable):
    """The upstream answered with an error status; `status` and its message are kept (502)."""

    metric_kind = "status"


class UpstreamTimeout(UpstreamError):
    """The upstream took longer than its timeout (504)."""

    kind = Kind.upstream_timeout
    metric_kind = "timeout"
    http_status = 504


class UpstreamBadResponse(UpstreamError):
    """A 2xx answer that is not a usable verbose_json transcription (502)."""

    metric_kind = "bad_response"


class UpstreamConfigError(GuardError):
    """The upstream settings cannot work (bad URL, unreadable or empty token file): raised at
    startup (`serve` exits with the message), never for a request."""

    kind = Kind.internal


class Observer(Protocol):
    """Where the client reports each exchange (guard/upstream_metrics.py implements it)."""

    def upstream_call(self, seconds: float, error_kind: str | None) -> None: ...


# ---------------------------------------------------------------- what goes out, what comes back
@dataclass(frozen=True)
class UpstreamAudio:
    data: bytes
    filename: str = "audio"
    content_type: str | None = None


@dataclass(frozen=True)
class UpstreamSegment:
    start: float | None  # None: the upstream gave no times (it ignored verbose_json)
    end: float | None
    text: str


@dataclass
class UpstreamTranscript:
    """The upstream's answer, and which upstream gave it."""

    upstream: str  # its base URL, without credentials
    model: str | None  # the model asked of it (None: the client sent none and none is configured)
    text: str
    language: str | None  # as the upstream says it ("english" from OpenAI, "en" from others)
    duration: float | None
    segments: list[UpstreamSegment]  # in the upstream's order
    seconds: float  # wall time of the exchange


class _Segment(BaseModel):
    model_config = ConfigDict(extra="ignore")
    start: float = Field(ge=0, allow_inf_nan=False)
    end: float = Field(ge=0, allow_inf_nan=False)
    text: str


class _Verbose(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str
    language: str | None = None
    duration: float | None = Field(None, allow_inf_nan=False)
    segments: list[_Segment] | None = None


# ---------------------------------------------------------------- helpers
def display_url(url: str) -> str:
    """`url` without userinfo, query or fragment: safe to put in a header, a log, a metric help."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def check_base_url(url: str) -> str:
    """An http(s) base URL as an OpenAI client takes it (`http://host:8000/v1`), without a trailing /."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise UpstreamConfigError(f"upstream URL {url!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamConfigError(f"upstream URL must be http(s)://host[:port]/path, e.g. http://127.0.0.1:8000/v1; "
                                  f"got {display_url(url) or url[:80]!r}")
    if parts.query or parts.fragment:
        raise UpstreamConfigError("upstream URL takes no query or fragment")
    return url.rstrip("/")


def read_token(path: Path) -> str:
    """The bearer token in `path` (surrounding whitespace stripped); never logged."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UpstreamConfigError(f"upstream token file {str(path)!r} is unreadable: {type(e).__name__}") from None
    if not token or any(c.isspace() for c in token) or not token.isprintable():
        raise UpstreamConfigError(f"upstream token file {str(path)!r} must hold one token on one line")
    return token


def upstream_message(body: bytes, limit: int = MESSAGE_CHARS) -> str:
    """The human part of an upstream's error body: OpenAI's `{"error": {"message"}}`, FastAPI's
    `{"detail": ...}` (faster-whisper-server nests OpenAI's shape in it), else the text itself."""
    text = body[:64 * 1024].decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    for _ in range(3):
        if isinstance(doc, dict):
            inner = doc.get("error", doc.get("detail", doc.get("message")))
            if inner is None:
                break
            doc = inner
            continue
        break
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        doc = doc["message"]
    message = doc if isinstance(doc, str) else (json.dumps(doc)[:limit] if doc is not None else text)
    message = " ".join(message.split())
    return (message[:limit] + "...") if len(message) > limit else (message or "(empty body)")


def forward_fields(fields: Iterable[tuple[str, str]], model: str | None) -> list[tuple[str, str]]:
    """The client's fields for the upstream: shaping fields replaced (verbose_json, segment
    timestamps, no stream), `model` replaced when the proxy is configured with one."""
    out = [(k, v) for k, v in fields if k not in SHAPING_FIELDS and not (model is not None and k == "model")]
    if model is not None:
        out.append(("model", model))
    out += [("response_format", "verbose_json"), ("timestamp_granularities[]", "segment")]
    return out


# ---------------------------------------------------------------- the client
class UpstreamClient:
    """One upstream, one bounded connection pool; thread-safe (httpx.Client is)."""

    def __init__(self, base_url: str, *, model: str | None = None, token: str | None = None,
                 timeout: float = 300.0, connect_timeout: float = 5.0, max_connections: int = 16,
                 retries: int = 2, observer: Observer | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = check_base_url(base_url)
        self.name = display_url(self.base_url)
        self.model = model
        self.timeout = timeout
        self.observer = observer
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                              keepalive_expiry=KEEPALIVE_EXPIRY_S)
        # trust_env=False: the upstream is what the operator named, never an env proxy's choice.
        transport = transport or httpx.HTTPTransport(limits=limits, retries=retries, trust_env=False)
        self._connect_timeout = connect_timeout
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.base_url + "/", headers=headers, transport=transport,
                                  timeout=self._timeouts(timeout), follow_redirects=False, trust_env=False)

    def _timeouts(self, total: float) -> httpx.Timeout:
        # `read` bounds the wait for the answer: the upstream writes nothing until it has
        # transcribed, so this is its processing time. `pool` bounds the wait for a free
        # connection of the bounded pool.
        return httpx.Timeout(total, connect=min(self._connect_timeout, total), pool=min(self._connect_timeout, total))

    def close(self) -> None:
        self._http.close()

    def transcribe(self, audio: UpstreamAudio, fields: Sequence[tuple[str, str]], *,
                   timeout: float | None = None) -> UpstreamTranscript:
        """Forward one transcription; `timeout` (e.g. the caller's remaining deadline) can only shorten it."""
        limit = self.timeout if timeout is None else max(0.001, min(self.timeout, timeout))
        data = forward_fields(fields, self.model)
        model = next((v for k, v in reversed(data) if k == "model"), None)
        t0 = time.perf_counter()
        try:
            body, status = self._exchange(audio, data, limit)
            if not 200 <= status < 300:
                raise UpstreamStatus(f"upstream {self.name} answered HTTP {status}: {upstream_message(body)}",
                                          upstream=self.name, status=status)
            transcript = self._parse(body, model, time.perf_counter() - t0)
        except UpstreamError as e:
            self._observe(time.perf_counter() - t0, e.metric_kind)
            raise
        self._observe(transcript.seconds, None)
        return transcript

    def _exchange(self, audio: UpstreamAudio, data: list[tuple[str, str]], limit: float) -> tuple[bytes, int]:
        form: dict[str, list[str]] = {}
        for k, v in data:
            form.setdefault(k, []).append(v)
        files = {"file": (audio.filename or "audio", audio.data, audio.content_type or "application/octet-stream")}
        try:
            with self._http.stream("POST", "audio/transcriptions", data=form, files=files,
                                   timeout=self._timeouts(limit)) as r:
                declared = r.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                    raise UpstreamBadResponse(f"upstream {self.name} answer is {int(declared)} bytes, over the "
                                              f"{MAX_RESPONSE_BYTES} byte cap", upstream=self.name, status=r.status_code)
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise UpstreamBadResponse(f"upstream {self.name} answer is over the {MAX_RESPONSE_BYTES} byte "
                                                  f"cap", upstream=self.name, status=r.status_code)
                    chunks.append(chunk)
                return b"".join(chunks), r.status_code
        except httpx.TimeoutException as e:
            phase = {httpx.ConnectTimeout: "connecting", httpx.WriteTimeout: "sending the audio",
                     httpx.PoolTimeout: "waiting for a free connection"}.get(type(e), "waiting for its answer")
            raise UpstreamTimeout(f"upstream {self.name} timed out {phase} (limit {limit:.3g} s)",
                                  upstream=self.name) from None
        except httpx.RemoteProtocolError as e:
            if "without sending a response" in str(e):  # h11's words for a close before any byte
                raise UpstreamUnavailable(f"upstream {self.name} closed the connection without answering (not "
                                          f"retried: it may have processed the request)", upstream=self.name) from None
            raise UpstreamBadResponse(f"upstream {self.name} broke the HTTP protocol: {_short(e)}",
                                      upstream=self.name) from None
        except httpx.TransportError as e:  # ConnectError, ReadError, WriteError, ...
            what = "refused or unreachable" if isinstance(e, httpx.ConnectError) else "connection failed"
            raise UpstreamUnavailable(f"upstream {self.name} {what}: {_short(e)}", upstream=self.name) from None

    def _parse(self, body: bytes, model: str | None, seconds: float) -> UpstreamTranscript:
        try:
            doc = _Verbose.model_validate_json(body)
        except ValidationError as e:
            first = e.errors()[0] if e.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ())) or "body"
            what = "is not JSON" if first.get("type") == "json_invalid" else \
                f"is not a verbose_json transcription ({where}: {first.get('msg', 'invalid')})"
            raise UpstreamBadResponse(f"upstream {self.name} answer {what}: {upstream_message(body, 120)}",
                                      upstream=self.name, status=200) from None
        segments = [UpstreamSegment(s.start, s.end, s.text) for s in (doc.segments or [])]
        if doc.segments is None and doc.text.strip():
            # It ignored verbose_json (an upstream that only speaks json): one untimed segment.
            segments = [UpstreamSegment(None, None, doc.text)]
        return UpstreamTranscript(self.name, model, doc.text, doc.language, doc.duration, segments, seconds)

    def _observe(self, seconds: float, error_kind: str | None) -> None:
        if self.observer is not None:
            self.observer.upstream_call(seconds, error_kind)


def _short(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:MESSAGE_CHARS]


def client_from_settings(settings, observer: Observer | None = None) -> UpstreamClient:
    """The proxy's client, from `Settings.upstream*` (the token is read once, here)."""
    if not settings.upstream:
        raise UpstreamConfigError("no upstream configured (--upstream URL)")
    token = read_token(settings.upstream_token_file) if settings.upstream_token_file else None
    return UpstreamClient(settings.upstream, model=settings.upstream_model, token=token,
                          timeout=settings.upstream_timeout, connect_timeout=settings.upstream_connect_timeout,
                          max_connections=settings.upstream_max_connections, retries=settings.upstream_retries,
                          observer=observer)

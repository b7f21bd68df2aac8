"""Prometheus metrics: one `GuardMetrics` per server, on its own registry, served over HTTP.

Every label set is small and closed. Values outside a set are folded into `other` (methods,
models, fallback components and reasons) or `UNKNOWN` (status codes), so a bad caller or a
model directory path can never grow the series count. The README's "Monitor" section lists
each metric; `deploy/prometheus/alerts.yml` and `deploy/grafana/whisper-guard.json` use them.
"""
from __future__ import annotations

import platform
import threading
from dataclasses import dataclass
from importlib import metadata
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_wsgi_server,
)

from guard.results import GuardResult, Verdict

NAMESPACE = "whisper_guard"

METHODS = ("Transcribe", "StreamTranscribe", "Verify")
TRANSCRIBING_METHODS = ("Transcribe", "StreamTranscribe")
# canonical status names (google.rpc.Code): the one vocabulary every transport reports outcomes in
# (`guard.serving.core.CANONICAL_CODE`); the gRPC transport's status codes carry the same names
CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
VERDICTS = tuple(v.value for v in Verdict)
STAGES = ("decode", "transcribe", "probe", "signature", "score")
FALLBACK_COMPONENTS = ("ctranslate2", "onnxruntime", "vad")
FALLBACK_REASONS = ("cuda_unavailable", "compute_type_unsupported", "provider_error")
OTHER = "other"
MAX_UNCONFIGURED_MODELS = 8  # before set_model_info names the models, admit at most this many

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
STAGE_BUCKETS = (0.001, 0.0025, 0.005) + LATENCY_BUCKETS
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


class GuardMetrics:
    """The guard's metrics on one registry; the serving layer calls it, `/metrics` reads it."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r, ns = self.registry, NAMESPACE
        self._lock = threading.Lock()
        self._models: set[str] = set()
        self._configured = False

        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info

        self.requests = Counter(
            "requests", "Finished requests (gRPC and HTTP) by method and canonical status code.",
            ["method", "code"], namespace=ns, registry=r)
        self.request_duration = Histogram(
            "request_duration_seconds", "Wall time of a request (gRPC or HTTP), from receipt to the last reply.",
            ["method"], namespace=ns, registry=r, buckets=LATENCY_BUCKETS)
        self.stage_duration = Histogram(
            "stage_duration_seconds", "Wall time of one pipeline stage within a request.",
            ["stage"], namespace=ns, registry=r, buckets=STAGE_BUCKETS)
        self.audio_seconds = Counter(
            "audio_seconds", "Seconds of audio processed (transcribed or verified).",
            ["model"], namespace=ns, registry=r)
        self.real_time_factor = Histogram(
            "real_time_factor", "Pipeline seconds per second of audio for transcription requests (<1 is faster than real time).",
            ["model"], namespace=ns, registry=r, buckets=RTF_BUCKETS)
        self.segments = Counter(
            "segments", "Scored segments by model and verdict.",
            ["model", "verdict"], namespace=ns, registry=r)
        self.score = Histogram(
            "segment_score", "Distribution of the calibrated hallucination score per segment (0 = grounded, 1 = hallucinated).",
            ["model"], namespace=ns, registry=r, buckets=SCORE_BUCKETS)
        self.in_flight = Gauge(
            "requests_in_flight", "Requests currently running inference.", namespace=ns, registry=r)
        self.queued = Gauge(
            "requests_queued", "Requests waiting for an inference slot.", namespace=ns, registry=r)
        self.concurrency_limit = Gauge(
            "concurrency_limit", "Configured maximum of requests running at once (max_concurrent).", namespace=ns, registry=r)
        self.queue_limit = Gauge(
            "queue_limit", "Configured maximum of waiting requests (max_queued).", namespace=ns, registry=r)
        self.rejections = Counter(
            "rejected", "Requests refused before running, by method and reason.",
            ["method", "reason"], namespace=ns, registry=r)
        self.serving = Gauge(
            "serving", "1 while the guard reports SERVING on gRPC health (and /readyz is 200), else 0.", namespace=ns, registry=r)
        self.build_info = Gauge(
            "build_info", "Always 1; labels carry the guard and engine versions and the device in use.",
            ["version", "device", "ctranslate2", "onnxruntime", "python"], namespace=ns, registry=r)
        self.model_info = Gauge(
            "model_info", "1 for each model the guard has loaded and serves by name.",
            ["model"], namespace=ns, registry=r)
        self.fallbacks = Counter(
            "fallbacks", "Times a component fell back to a slower path (e.g. onnxruntime CUDA unavailable, CPU used).",
            ["component", "reason"], namespace=ns, registry=r)

        for m in METHODS:
            self.requests.labels(m, "OK")
            self.request_duration.labels(m)
            self.rejections.labels(m, "overload")
        for s in STAGES:
            self.stage_duration.labels(s)
        self.serving.set(0)

    # ---- label hygiene -------------------------------------------------------------------
    def _model(self, name: str) -> str:
        with self._lock:
            if name in self._models:
                return name
            if not self._configured and len(self._models) < MAX_UNCONFIGURED_MODELS:
                self._models.add(name)
                self._init_model(name)
                return name
        return OTHER

    def _init_model(self, model: str) -> None:
        for v in VERDICTS:
            self.segments.labels(model, v)
        self.audio_seconds.labels(model)
        self.real_time_factor.labels(model)
        self.score.labels(model)

    @staticmethod
    def _method(method: str) -> str:
        return method if method in METHODS else OTHER

    # ---- API used by the serving layer --------------------------------------------------------
    def observe_request(self, method: str, code: str, seconds: float) -> None:
        """One finished request: its canonical status name (e.g. `OK`, `RESOURCE_EXHAUSTED`) and wall time."""
        method = self._method(method)
        code = code.removeprefix("StatusCode.").upper()
        self.requests.labels(method, code if code in CODES else "UNKNOWN").inc()
        self.request_duration.labels(method).observe(max(0.0, seconds))

    def observe_result(self, result: GuardResult, method: str) -> None:
        """A result the pipeline produced: per-stage timings, audio, RTF, verdict counts and scores."""
        model = self._model(result.model)
        for stage, seconds in result.timings.items():
            if stage in STAGES:
                self.stage_duration.labels(stage).observe(max(0.0, seconds))
        if result.audio_seconds > 0:
            self.audio_seconds.labels(model).inc(result.audio_seconds)
            if self._method(method) in TRANSCRIBING_METHODS:
                busy = sum(v for k, v in result.timings.items() if k in STAGES)
                self.real_time_factor.labels(model).observe(busy / result.audio_seconds)
        for s in result.segments:
            self.segments.labels(model, Verdict(s.verdict).value).inc()
            self.score.labels(model).observe(min(1.0, max(0.0, s.score)))

    def rejected(self, method: str) -> None:
        """A request refused because every slot and queue place was taken (RESOURCE_EXHAUSTED)."""
        self.rejections.labels(self._method(method), "overload").inc()

    def set_serving(self, serving: bool) -> None:
        self.serving.set(1 if serving else 0)

    def set_limits(self, max_concurrent: int, max_queued: int) -> None:
        """The configured capacity, so dashboards can show saturation as a ratio."""
        self.concurrency_limit.set(max_concurrent)
        self.queue_limit.set(max_queued)

    def set_model_info(self, models: list[str], device: str, version: str) -> None:
        """Name the served models (the only values the `model` label may take) and the build."""
        with self._lock:
            self._configured = True
            self._models = set(models)
        self.model_info.clear()
        for m in models:
            self.model_info.labels(m).set(1)
            self._init_model(m)
        self.build_info.clear()
        self.build_info.labels(
            version, device, _version("ctranslate2"), _version("onnxruntime"), platform.python_version()
        ).set(1)

    def fallback(self, component: str, reason: str) -> None:
        """A component fell back (e.g. `fallback("onnxruntime", "cuda_unavailable")`)."""
        self.fallbacks.labels(
            component if component in FALLBACK_COMPONENTS else OTHER,
            reason if reason in FALLBACK_REASONS else OTHER,
        ).inc()


class _WithoutCreated:
    """A read-only view of a registry minus the `*_created` samples prometheus_client adds.

    They double the exposition for no use here (Prometheus derives resets itself); dropping
    them per registry avoids `disable_created_metrics()`, which is process-global.
    """

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def collect(self):
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family

    def restricted_registry(self, names):
        return _WithoutCreated(self._registry.restricted_registry(names))


@dataclass
class MetricsServer:
    """The `/metrics` HTTP server running on a daemon thread."""

    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def parse_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (loopback); port 0 picks a free one."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address must be host:port, got {address!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def start_metrics_server(metrics: GuardMetrics, address: str) -> MetricsServer:
    """Serve `metrics.registry` at `http://address/metrics` until `.shutdown()`."""
    host, port = parse_address(address)
    httpd, thread = start_wsgi_server(port, addr=host, registry=_WithoutCreated(metrics.registry))
    return MetricsServer(host=host, port=httpd.server_address[1], _httpd=httpd, _thread=thread)

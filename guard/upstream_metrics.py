"""Prometheus metrics of the upstream a verifying proxy calls, on the guard's own registry.

Two families, closed label sets (nothing a caller or an upstream sends becomes a label value):
- `whisper_guard_upstream_request_duration_seconds{outcome}`: wall time of each exchange with the
  upstream, `outcome` = ok | error.
- `whisper_guard_upstream_errors_total{kind}`: failed exchanges by kind = unavailable (no
  connection), status (an error status from the upstream), timeout, bad_response (a 2xx answer
  that is not a usable verbose_json transcription, including segments that cannot be verified).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from guard.upstream import ERROR_KINDS

NAMESPACE = "whisper_guard"
OUTCOMES = ("ok", "error")
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class UpstreamMetrics:
    """Implements `guard.upstream.Observer`."""

    def __init__(self, registry: CollectorRegistry):
        self.duration = Histogram(
            "upstream_request_duration_seconds",
            "Wall time of one exchange with the upstream ASR (verifying proxy), by outcome.",
            ["outcome"], namespace=NAMESPACE, registry=registry, buckets=UPSTREAM_BUCKETS)
        self.errors = Counter(
            "upstream_errors", "Failed exchanges with the upstream ASR by kind "
            "(unavailable, status, timeout, bad_response).",
            ["kind"], namespace=NAMESPACE, registry=registry)
        for o in OUTCOMES:
            self.duration.labels(o)
        for k in ERROR_KINDS:
            self.errors.labels(k)

    def upstream_call(self, seconds: float, error_kind: str | None) -> None:
        self.duration.labels("ok" if error_kind is None else "error").observe(max(0.0, seconds))
        if error_kind is not None:
            self.errors.labels(error_kind if error_kind in ERROR_KINDS else "bad_response").inc()

    def unverifiable(self) -> None:
        """An answer that parsed but whose segments cannot be placed on the audio."""
        self.errors.labels("bad_response").inc()

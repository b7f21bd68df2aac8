"""A real guard HTTP server in proxy mode on loopback (what `serve --http-address --upstream` builds)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import json
from pathlib import Path

from guard.config import Settings
from guard.metrics import GuardMetrics
from guard.serving.core import Serving
from guard.transports.http.proxy import proxy_mode
from guard.transports.http.server import HttpServer


# The suppress tests use the shipped Verify calibration's own thresholds (no override): what a user
# who sends guard_policy=suppress gets. Its thresholds are read here only to check the premise.
VERIFY_THRESHOLDS = json.loads((Path(__file__).resolve().parents[1] / "guard" / "calibration" /
                                "verify-tiny.en.json").read_text())["thresholds"]
SUPPRESS = {"guard_policy": "suppress"}


@contextlib.contextmanager
def running_proxy(guard, upstream: str, **overrides) -> Iterator[HttpServer]:
    """The guard's HTTP server in proxy mode (what `serve --http-address --upstream` builds), on
    127.0.0.1, around the session's Guard."""
    settings = Settings(**{"address": "127.0.0.1:0", "http_address": "127.0.0.1:0", "metrics_address": "",
                           "upstream": upstream, **overrides})
    metrics = GuardMetrics()
    serving = Serving(settings, metrics)
    server = HttpServer(settings, serving, guard=guard, transcribe=proxy_mode(settings, metrics)).start()
    try:
        yield server
    finally:
        server.stop(0)

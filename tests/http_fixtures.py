"""Shared pieces of the HTTP tests: a real HttpServer on loopback around the session's real Guard."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import openai

from guard.config import Settings
from guard.metrics import GuardMetrics
from guard.serving.core import Serving
from guard.transports.http.server import HttpServer


@contextlib.contextmanager
def running_http(guard, **overrides) -> Iterator[HttpServer]:
    """A real HttpServer on 127.0.0.1 (ephemeral port) around `guard`, with its own core and metrics."""
    settings = Settings(**{"address": "127.0.0.1:0", "http_address": "127.0.0.1:0", "metrics_address": "",
                           **overrides})
    serving = Serving(settings, GuardMetrics())
    server = HttpServer(settings, serving, guard=guard).start()
    try:
        yield server
    finally:
        server.stop(0)


def sdk(server: HttpServer, api_key: str = "unused", **kw) -> openai.OpenAI:
    """The official SDK pointed at the server; no retries (the tests look at each answer)."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=kw.pop("timeout", 120),
                         **kw)


def sample_value(server: HttpServer, name: str, **labels) -> float:
    value = server.serving.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value

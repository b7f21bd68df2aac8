"""guard/upstream_metrics.py: closed label sets, values from real exchanges with loopback
upstreams, and `promtool check metrics` on a real scrape beside the guard's own metrics."""
from __future__ import annotations

import contextlib
import subprocess
import urllib.request

import pytest
from test_metrics import need
from upstream_stubs import answer, answer_json, closed_port, stub_upstream, verbose

from guard.metrics import GuardMetrics, start_metrics_server
from guard.upstream import ERROR_KINDS, UpstreamAudio, UpstreamClient, UpstreamError
from guard.upstream_metrics import UpstreamMetrics

AUDIO = UpstreamAudio(b"\0" * 64, "a.wav")


def exchange(metrics: UpstreamMetrics, behaviour=None, url: str | None = None, **kw) -> None:
    def go(base):
        client = UpstreamClient(base, observer=metrics, retries=0, **kw)
        try:
            with contextlib.suppress(UpstreamError):  # failures are what is being counted
                client.transcribe(AUDIO, [])
        finally:
            client.close()

    if behaviour is None:
        go(url)
    else:
        with stub_upstream(behaviour) as stub:
            go(stub.base_url)


@pytest.fixture
def pair():
    m = GuardMetrics()
    m.set_model_info(["tiny.en"], "cpu", "0.1.0")
    return m, UpstreamMetrics(m.registry)


def val(m: GuardMetrics, name: str, **labels) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_series_exist_at_zero_before_any_call(pair):
    m, _ = pair
    for kind in ERROR_KINDS:
        assert val(m, "whisper_guard_upstream_errors_total", kind=kind) == 0
    for outcome in ("ok", "error"):
        assert val(m, "whisper_guard_upstream_request_duration_seconds_count", outcome=outcome) == 0


def test_each_kind_is_counted_from_a_real_exchange(pair):
    m, u = pair
    exchange(u, answer_json(200, verbose([(0.0, 1.0, " hi")])))
    exchange(u, answer_json(500, {"error": {"message": "boom"}}))
    exchange(u, answer(200, b"garbage", "text/plain"))
    exchange(u, answer_json(200, verbose([(0.0, 1.0, " late")]), delay=2.0), timeout=0.3)
    exchange(u, url=f"http://127.0.0.1:{closed_port()}/v1")
    for kind in ERROR_KINDS:
        assert val(m, "whisper_guard_upstream_errors_total", kind=kind) == 1, kind
    assert val(m, "whisper_guard_upstream_request_duration_seconds_count", outcome="ok") == 1
    assert val(m, "whisper_guard_upstream_request_duration_seconds_count", outcome="error") == 4
    # the timed-out exchange took at least its limit (same run, no absolute timing asserted)
    assert val(m, "whisper_guard_upstream_request_duration_seconds_sum", outcome="error") >= 0.3


def test_unknown_kinds_fold_into_the_closed_set(pair):
    m, u = pair
    u.upstream_call(0.1, "something-new")
    assert val(m, "whisper_guard_upstream_errors_total", kind="something-new") is None
    assert val(m, "whisper_guard_upstream_errors_total", kind="bad_response") == 1


def test_promtool_check_metrics_on_real_scrape(pair):
    promtool = need("promtool")
    m, u = pair
    exchange(u, answer_json(200, verbose([(0.0, 1.0, " hi")])))
    exchange(u, answer_json(502, {"error": {"message": "bad gateway"}}))
    server = start_metrics_server(m, "127.0.0.1:0")
    try:
        body = urllib.request.urlopen(server.url, timeout=5).read()
    finally:
        server.shutdown()
    assert b"whisper_guard_upstream_errors_total{kind=\"status\"} 1.0" in body
    assert b"whisper_guard_upstream_request_duration_seconds_bucket" in body
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert out.stdout.strip() == b"" and out.stderr.strip() == b"", "promtool lint findings"

"""guard/metrics.py: names, closed label sets, values from real GuardResults, the HTTP server,
and `promtool check metrics` on a real scrape."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request

import pytest

from guard.config import PolicyMode
from guard.metrics import (
    SCORE_BUCKETS,
    GuardMetrics,
    parse_address,
    start_metrics_server,
)
from guard.results import GuardResult, ScoredSegment, Segment, Verdict


def need(binary: str) -> str:
    """The binary's path; CI must have it (ensure-prometheus.sh installs it), a dev box may skip."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} missing in CI: deploy/scripts/ensure-prometheus.sh should install it")
        pytest.skip(f"{binary} not installed (run deploy/scripts/ensure-prometheus.sh)")
    return path


def seg(i: int) -> Segment:
    return Segment(index=i, window=0, start=2.0 * i, end=2.0 * i + 2, text=f" s{i}", tokens=[50364 + i],
                   avg_logprob=-0.3, no_speech_prob=0.05, compression_ratio=1.3)


def result(scores_verdicts, model="tiny.en", audio=10.0, timings=None) -> GuardResult:
    return GuardResult(
        segments=[ScoredSegment(seg(i), s, v) for i, (s, v) in enumerate(scores_verdicts)],
        model=model, language="en", audio_seconds=audio, policy=PolicyMode.suppress,
        timings=timings if timings is not None else
        {"decode": 0.02, "transcribe": 1.5, "probe": 0.3, "signature": 0.05, "score": 0.002},
    )


@pytest.fixture
def m() -> GuardMetrics:
    g = GuardMetrics()
    g.set_model_info(["tiny.en", "base"], "cpu", "0.1.0")
    return g


def val(m: GuardMetrics, name: str, **labels) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_result_counts_scores_stages_and_rtf(m):
    r = result([(0.05, Verdict.pass_), (0.62, Verdict.flag), (0.97, Verdict.suppress), (0.99, Verdict.suppress)])
    m.observe_result(r, "Transcribe")
    assert val(m, "whisper_guard_segments_total", model="tiny.en", verdict="pass") == 1
    assert val(m, "whisper_guard_segments_total", model="tiny.en", verdict="flag") == 1
    assert val(m, "whisper_guard_segments_total", model="tiny.en", verdict="suppress") == 2
    assert val(m, "whisper_guard_segments_total", model="base", verdict="suppress") == 0  # pre-initialised
    assert val(m, "whisper_guard_audio_seconds_total", model="tiny.en") == 10.0
    # score histogram: cumulative buckets
    assert val(m, "whisper_guard_segment_score_bucket", model="tiny.en", le="0.05") == 1
    assert val(m, "whisper_guard_segment_score_bucket", model="tiny.en", le="0.65") == 2
    assert val(m, "whisper_guard_segment_score_bucket", model="tiny.en", le="0.95") == 2
    assert val(m, "whisper_guard_segment_score_bucket", model="tiny.en", le="1.0") == 4
    assert val(m, "whisper_guard_segment_score_sum", model="tiny.en") == pytest.approx(0.05 + 0.62 + 0.97 + 0.99)
    for stage, secs in r.timings.items():
        assert val(m, "whisper_guard_stage_duration_seconds_sum", stage=stage) == pytest.approx(secs)
        assert val(m, "whisper_guard_stage_duration_seconds_count", stage=stage) == 1
    rtf = sum(r.timings.values()) / r.audio_seconds
    assert val(m, "whisper_guard_real_time_factor_sum", model="tiny.en") == pytest.approx(rtf)
    assert val(m, "whisper_guard_real_time_factor_bucket", model="tiny.en", le="0.1") == 0
    assert val(m, "whisper_guard_real_time_factor_bucket", model="tiny.en", le="0.2") == 1


def test_verify_counts_audio_but_not_rtf(m):
    m.observe_result(result([(0.1, Verdict.pass_)], timings={"decode": 0.01, "probe": 0.2, "score": 0.001}), "Verify")
    assert val(m, "whisper_guard_audio_seconds_total", model="tiny.en") == 10.0
    assert val(m, "whisper_guard_real_time_factor_count", model="tiny.en") == 0
    assert val(m, "whisper_guard_stage_duration_seconds_count", stage="transcribe") == 0


def test_zero_audio_and_unknown_stage_are_ignored(m):
    m.observe_result(result([], audio=0.0, timings={"decode": 0.01, "warmup": 3.0}), "Transcribe")
    assert val(m, "whisper_guard_real_time_factor_count", model="tiny.en") == 0
    assert val(m, "whisper_guard_stage_duration_seconds_count", stage="warmup") is None
    assert val(m, "whisper_guard_stage_duration_seconds_count", stage="decode") == 1


def test_label_sets_stay_closed(m):
    m.observe_request("Bogus/Method", "OK", 0.5)
    m.observe_request("Transcribe", "NOT_A_CODE", 0.5)
    m.observe_request("Verify", "StatusCode.INVALID_ARGUMENT", 0.1)
    m.observe_result(result([(0.5, Verdict.flag)], model="/srv/models/my-ct2-dir"), "Transcribe")
    m.fallback("onnxruntime", "cuda_unavailable")
    m.fallback("some lib", "free text reason 1234")
    m.rejected("Whatever")
    assert val(m, "whisper_guard_requests_total", method="other", code="OK") == 1
    assert val(m, "whisper_guard_requests_total", method="Transcribe", code="UNKNOWN") == 1
    assert val(m, "whisper_guard_requests_total", method="Verify", code="INVALID_ARGUMENT") == 1
    assert val(m, "whisper_guard_segments_total", model="other", verdict="flag") == 1
    assert val(m, "whisper_guard_segments_total", model="/srv/models/my-ct2-dir", verdict="flag") is None
    assert val(m, "whisper_guard_fallbacks_total", component="onnxruntime", reason="cuda_unavailable") == 1
    assert val(m, "whisper_guard_fallbacks_total", component="other", reason="other") == 1
    assert val(m, "whisper_guard_rejected_total", method="other", reason="overload") == 1
    labels = {k: set() for k in ("method", "code", "model", "verdict", "stage", "component", "reason")}
    for fam in m.registry.collect():
        for s in fam.samples:
            for k in labels:
                if k in s.labels:
                    labels[k].add(s.labels[k])
    assert labels["method"] <= {"Transcribe", "StreamTranscribe", "Verify", "other"}
    assert labels["model"] <= {"tiny.en", "base", "other"}
    assert labels["verdict"] == {"pass", "flag", "suppress"}
    assert labels["stage"] == {"decode", "transcribe", "probe", "signature", "score"}


def test_unconfigured_models_are_capped():
    g = GuardMetrics()
    for i in range(20):
        g.observe_result(result([(0.1, Verdict.pass_)], model=f"m{i}"), "Transcribe")
    models = {s.labels["model"] for f in g.registry.collect() for s in f.samples if "model" in s.labels}
    assert len(models) == 9 and "other" in models


def test_request_latency_gauges_info_serving(m):
    m.observe_request("Transcribe", "OK", 0.3)
    m.observe_request("Transcribe", "RESOURCE_EXHAUSTED", 0.001)
    m.rejected("Transcribe")
    m.in_flight.inc(2)
    m.queued.set(5)
    m.set_limits(2, 8)
    m.set_serving(True)
    assert val(m, "whisper_guard_requests_total", method="Transcribe", code="OK") == 1
    assert val(m, "whisper_guard_requests_total", method="Transcribe", code="RESOURCE_EXHAUSTED") == 1
    assert val(m, "whisper_guard_request_duration_seconds_bucket", method="Transcribe", le="0.01") == 1
    assert val(m, "whisper_guard_request_duration_seconds_bucket", method="Transcribe", le="0.25") == 1
    assert val(m, "whisper_guard_request_duration_seconds_bucket", method="Transcribe", le="0.5") == 2
    assert val(m, "whisper_guard_request_duration_seconds_bucket", method="Transcribe", le="120.0") == 2
    assert val(m, "whisper_guard_rejected_total", method="Transcribe", reason="overload") == 1
    assert val(m, "whisper_guard_requests_in_flight") == 2
    assert val(m, "whisper_guard_requests_queued") == 5
    assert val(m, "whisper_guard_concurrency_limit") == 2
    assert val(m, "whisper_guard_serving") == 1
    m.set_serving(False)
    assert val(m, "whisper_guard_serving") == 0
    assert val(m, "whisper_guard_model_info", model="base") == 1
    m.set_model_info(["tiny.en"], "cuda", "0.2.0")
    assert val(m, "whisper_guard_model_info", model="base") is None
    info = [s.labels for f in m.registry.collect() for s in f.samples if s.name == "whisper_guard_build_info"]
    assert len(info) == 1 and info[0]["version"] == "0.2.0" and info[0]["device"] == "cuda"


def test_buckets_fit_the_domain():
    assert SCORE_BUCKETS[0] == 0.05 and SCORE_BUCKETS[-1] == 1.0 and len(SCORE_BUCKETS) == 20
    g = GuardMetrics()
    les = {s.labels["le"] for f in g.registry.collect() for s in f.samples
           if s.name == "whisper_guard_request_duration_seconds_bucket"}
    assert {"0.01", "120.0", "+Inf"} <= les


def test_registries_are_independent():
    a, b = GuardMetrics(), GuardMetrics()
    a.observe_request("Verify", "OK", 0.1)
    assert a.registry.get_sample_value("whisper_guard_requests_total", {"method": "Verify", "code": "OK"}) == 1
    assert b.registry.get_sample_value("whisper_guard_requests_total", {"method": "Verify", "code": "OK"}) == 0


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    (":0", ("127.0.0.1", 0)),
    ("[::1]:9464", ("::1", 9464)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
])
def test_parse_address(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize("bad", ["9464", "host:", "host:port", "h:70000"])
def test_parse_address_rejects(bad):
    with pytest.raises(ValueError):
        parse_address(bad)


def test_server_serves_scrape_and_shuts_down(m):
    m.observe_result(result([(0.9, Verdict.suppress)]), "Transcribe")
    server = start_metrics_server(m, "127.0.0.1:0")
    try:
        assert server.port > 0
        body = urllib.request.urlopen(server.url, timeout=5).read().decode()
        assert 'whisper_guard_segments_total{model="tiny.en",verdict="suppress"} 1.0' in body
        assert "_created" not in body
        assert "process_resident_memory_bytes" in body
    finally:
        server.shutdown()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(server.url, timeout=2)
    with socket.socket() as s:  # no listener left (TIME_WAIT from our own scrape is allowed)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))


def test_promtool_check_metrics_on_real_scrape(m):
    promtool = need("promtool")
    m.observe_result(result([(0.1, Verdict.pass_), (0.7, Verdict.flag)]), "StreamTranscribe")
    m.observe_request("StreamTranscribe", "OK", 4.2)
    m.rejected("Verify")
    m.fallback("onnxruntime", "cuda_unavailable")
    m.set_limits(2, 8)
    server = start_metrics_server(m, "127.0.0.1:0")
    try:
        body = urllib.request.urlopen(server.url, timeout=5).read()
    finally:
        server.shutdown()
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert out.stdout.strip() == b"" and out.stderr.strip() == b"", "promtool lint findings"

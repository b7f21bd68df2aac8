"""A real Prometheus scraping a real guard.

`whisper-guard serve` runs as a subprocess on loopback with tiny.en on CPU (ephemeral gRPC and
metrics ports). The Debian `prometheus` server (deploy/scripts/ensure-prometheus.sh installs
it) runs on 127.0.0.1 with a temporary TSDB, deploy/prometheus/prometheus.yml (target and
intervals changed) and the project's alerts.yml. The test makes real gRPC calls of every kind
(pass/flag/suppress verdicts, a client error, a real overload rejection), then asks
Prometheus' HTTP API for the series and checks them against what the calls returned; it runs
every Grafana panel query through Prometheus, checks the rules evaluate without error, and
stops the guard to see WhisperGuardDown go pending.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from conftest import prometheus_binary

from guard.audio import decode_file
from guard.client import VERDICT_NAMES, GuardClient, pcm16_chunks

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
AUDIO = ROOT / "tests" / "fixtures"  # committed clips: the test needs no corpus
SPEECH = AUDIO / "speech-agent-alreadyon.flac"  # clear English speech
NONSPEECH = AUDIO / "nonspeech-music.flac"  # a tabla loop; tiny.en invents "Thanks for watching!" (score ~0.999)
LONG = AUDIO / "mixture-speech-then-music-36s.flac"  # 36 s: keeps the only inference slot busy for a while
MODEL = "tiny.en"
DASHBOARD = DEPLOY / "grafana" / "whisper-guard.json"
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$namespace": ".*", "$job": "whisper-guard",
                "$model": ".*"}

pytestmark = pytest.mark.slow


def need(binary: str) -> str:
    path = prometheus_binary(binary)  # $PROMETHEUS, else PATH
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} missing in CI: deploy/scripts/ensure-prometheus.sh should install it")
        pytest.skip(f"{binary} not installed (run deploy/scripts/ensure-prometheus.sh)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class Guard:
    """`whisper-guard serve` in a subprocess; ports parsed from its log."""

    def __init__(self, tmp: Path):
        exe = Path(sys.executable).with_name("whisper-guard")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "guard.cli"]
        cmd += ["serve", "--address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0", "--model", MODEL,
                "--device", "cpu", "--max-concurrent", "1", "--max-queued", "0", "--grace-seconds", "2"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_GUARD_")}
        env.update(WHISPER_GUARD_LOG_LEVEL="INFO", WHISPER_GUARD_MODEL_CACHE=str(tmp / "model-cache"))
        self.log: list[str] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=tmp)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.grpc_port = int(self.wait_for(r"listening on 127\.0\.0\.1:(\d+)", 60).group(1))
        self.metrics_port = int(self.wait_for(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", 60).group(1))
        self.wait_for(r"SERVING models", 180)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line.rstrip())

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain
                raise AssertionError(f"guard exited {self.proc.returncode}:\n" + "\n".join(self.log[-40:]))
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the guard's log within {timeout} s:\n" + "\n".join(self.log[-40:]))

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


class Prometheus:
    """The real prometheus server on loopback, scraping `target` every second."""

    def __init__(self, tmp: Path, target: str):
        binary = need("prometheus")
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(DEPLOY / "prometheus" / r) for r in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logfile = open(tmp / "prometheus.log", "w+")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.logfile, stderr=subprocess.STDOUT, cwd=tmp)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):  # not listening yet
                if http_get(f"{self.url}/-/ready", 1) is not None:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.logfile.seek(0)
                raise AssertionError("prometheus did not become ready:\n" + self.logfile.read()[-3000:])
            time.sleep(0.2)

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            body = json.loads(http_get(url, 10))
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
        return body

    def query(self, expr: str) -> list[dict]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.logfile.close()


class Calls:
    """What the gRPC calls returned, tallied the way the metrics should count it."""

    def __init__(self):
        self.requests: Counter[tuple[str, str]] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.scores: list[float] = []
        self.audio_seconds = 0.0
        self.stages: Counter[str] = Counter()
        self.stage_seconds: Counter[str] = Counter()
        self.transcriptions = 0

    def add(self, method: str, segments, summary) -> None:
        self.requests[(method, "OK")] += 1
        for s in segments:
            self.verdicts[VERDICT_NAMES[s.verdict]] += 1
            self.scores.append(s.score)
        self.audio_seconds += summary.audio_seconds
        for t in summary.timings:
            self.stages[t.stage] += 1
            self.stage_seconds[t.stage] += t.seconds
        if method != "Verify":
            self.transcriptions += 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prom-integration")
    guard = Guard(tmp)
    prom = None
    try:
        prom = Prometheus(tmp, f"127.0.0.1:{guard.metrics_port}")
        # rate() only sees an increase from a sample Prometheus already holds: let it scrape the
        # counters at 0 before the calls, or a rejection made before the first scrape never shows
        deadline = time.monotonic() + 60
        zero = 'whisper_guard_rejected_total{method="Transcribe",reason="overload"}'
        while prom.value(zero) is None and time.monotonic() < deadline:
            time.sleep(0.25)
        assert prom.value(zero) == 0, "Prometheus never scraped the guard before the calls"
        calls = make_calls(guard)
        wait_until_scraped(prom, calls)
        yield guard, prom, calls
    finally:
        guard.stop()
        if prom:
            prom.stop()


def scrape_value(guard: Guard, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in http_get(guard.metrics_url).decode().splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == wanted:
            return float(m.group(2))
    return 0.0


def make_calls(guard: Guard) -> Calls:
    calls = Calls()
    address = f"127.0.0.1:{guard.grpc_port}"
    with GuardClient(address, timeout=300) as client:
        for audio, policy in ((SPEECH, "suppress"), (NONSPEECH, "suppress"), (NONSPEECH, "flag")):
            r = client.transcribe(audio, policy=policy)
            calls.add("Transcribe", r.segments, r.summary)
        v = client.verify(SPEECH, ["That agent is already logged on."], policy="flag")
        calls.add("Verify", v.segments, v.summary)
        pcm = (np.clip(decode_file(SPEECH, max_seconds=60), -1, 1) * 32767).round().astype("<i2").tobytes()
        events = list(client.stream(pcm16_chunks(pcm, chunk_seconds=0.5), sample_rate=16000, policy="suppress"))
        segments = [e.segment for e in events if e.HasField("segment")]
        calls.add("StreamTranscribe", segments, events[-1].summary.summary)

        # a client error: bytes that are no audio
        with pytest.raises(grpc.RpcError) as bad:
            client.transcribe(b"this is not audio at all" * 40)
        calls.requests[("Transcribe", bad.value.code().name)] += 1

        # a real overload: one inference slot, no queue, a second call while the first runs
        busy: dict = {}

        def long_call():
            busy["reply"] = client.transcribe(LONG, policy="suppress")

        t = threading.Thread(target=long_call)
        t.start()
        deadline = time.monotonic() + 60
        while scrape_value(guard, "whisper_guard_requests_in_flight") < 1:
            assert time.monotonic() < deadline and t.is_alive(), "the long call never took the slot"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as rejected:
            client.transcribe(SPEECH)
        assert rejected.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        calls.requests[("Transcribe", "RESOURCE_EXHAUSTED")] += 1
        t.join(timeout=300)
        r = busy["reply"]
        calls.add("Transcribe", r.segments, r.summary)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad.value
    # the calls must exercise every verdict, or the per-verdict checks below prove little
    assert set(calls.verdicts) == {"pass", "flag", "suppress"}, calls.verdicts
    return calls


def wait_until_scraped(prom: Prometheus, calls: Calls, timeout: float = 60) -> None:
    total = sum(calls.requests.values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.value('sum(whisper_guard_requests_total{job="whisper-guard"})') == total:
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never saw {total} requests: {prom.query('whisper_guard_requests_total')}")


# ---- the series Prometheus stored match the calls ----------------------------------------------------


def test_target_is_up_and_serving(stack):
    guard, prom, _ = stack
    assert prom.value('up{job="whisper-guard"}') == 1
    assert prom.value('whisper_guard_serving{job="whisper-guard"}') == 1
    assert prom.value(f'whisper_guard_model_info{{model="{MODEL}"}}') == 1
    info = prom.query("whisper_guard_build_info")
    assert len(info) == 1 and info[0]["metric"]["device"] == "cpu"
    assert prom.value("whisper_guard_concurrency_limit") == 1 and prom.value("whisper_guard_queue_limit") == 0


def test_segments_by_verdict_match_the_replies(stack):
    _, prom, calls = stack
    for verdict in ("pass", "flag", "suppress"):
        got = prom.value(f'whisper_guard_segments_total{{job="whisper-guard",model="{MODEL}",verdict="{verdict}"}}')
        assert got == calls.verdicts[verdict], (verdict, got, calls.verdicts)
    assert prom.value('count(whisper_guard_segments_total{model!="tiny.en"})') is None  # no other model label


def test_requests_by_method_and_code_match_the_calls(stack):
    _, prom, calls = stack
    nonzero = prom.query('whisper_guard_requests_total{job="whisper-guard"} > 0')
    got = {(s["metric"]["method"], s["metric"]["code"]): float(s["value"][1]) for s in nonzero}
    assert got == {k: float(v) for k, v in calls.requests.items()}
    for method in ("Transcribe", "StreamTranscribe", "Verify"):
        n = sum(v for (m, _), v in calls.requests.items() if m == method)
        assert prom.value(f'whisper_guard_request_duration_seconds_count{{method="{method}"}}') == n


def test_overload_rejection_is_counted(stack):
    _, prom, _ = stack
    assert prom.value('whisper_guard_rejected_total{method="Transcribe",reason="overload"}') == 1
    assert prom.value('sum(whisper_guard_rejected_total{method!="Transcribe"})') == 0
    assert prom.value("whisper_guard_requests_in_flight") == 0 and prom.value("whisper_guard_requests_queued") == 0


def test_scores_audio_and_rtf_match_the_replies(stack):
    _, prom, calls = stack
    assert prom.value(f'whisper_guard_segment_score_count{{model="{MODEL}"}}') == len(calls.scores)
    assert prom.value(f'whisper_guard_segment_score_sum{{model="{MODEL}"}}') == pytest.approx(sum(calls.scores), abs=1e-6)
    n_low = sum(1 for s in calls.scores if s <= 0.5)
    assert prom.value(f'whisper_guard_segment_score_bucket{{model="{MODEL}",le="0.5"}}') == n_low
    assert prom.value(f'whisper_guard_audio_seconds_total{{model="{MODEL}"}}') == pytest.approx(calls.audio_seconds, rel=1e-6)
    assert prom.value(f'whisper_guard_real_time_factor_count{{model="{MODEL}"}}') == calls.transcriptions
    rtf = prom.value(f'histogram_quantile(0.5, whisper_guard_real_time_factor_bucket{{model="{MODEL}"}})')
    assert 0 < rtf < 10


def test_stage_durations_cover_the_pipeline(stack):
    _, prom, calls = stack
    counts = {s["metric"]["stage"]: float(s["value"][1])
              for s in prom.query("whisper_guard_stage_duration_seconds_count > 0")}
    sums = {s["metric"]["stage"]: float(s["value"][1]) for s in prom.query("whisper_guard_stage_duration_seconds_sum")}
    assert {"decode", "transcribe", "probe", "signature", "score"} <= set(calls.stages), calls.stages
    assert counts == {stage: float(n) for stage, n in calls.stages.items()}
    for stage, seconds in calls.stage_seconds.items():
        assert sums[stage] == pytest.approx(seconds, rel=1e-3, abs=1e-4), stage


def test_scrape_passes_promtool_check_metrics(stack):
    guard, _, _ = stack
    out = subprocess.run([need("promtool"), "check", "metrics"], input=http_get(guard.metrics_url),
                         capture_output=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def test_container_healthcheck_sees_serving(stack):
    guard, _, _ = stack
    env = {**os.environ, "WHISPER_GUARD_ADDRESS": f"0.0.0.0:{guard.grpc_port}"}
    env.pop("WHISPER_GUARD_TLS_CERT", None)
    out = subprocess.run([sys.executable, str(DEPLOY / "docker" / "healthcheck.py")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


# ---- dashboard and rules against the real server -----------------------------------------------------


def _empty_panels(prom, dash) -> list[str]:
    empty = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(var, value)
            body = prom.api("query", query=expr)
            assert body["status"] == "success", f"{panel['title']}: {expr}: {body.get('error')}"
            if not body["data"]["result"]:
                empty.append(panel["title"])
    return empty


def test_every_dashboard_query_runs(stack):
    _, prom, _ = stack
    dash = json.loads(DASHBOARD.read_text())
    # with real traffic these panels must show data (recording rules, errors and fallbacks may not yet);
    # rate() panels need two scrapes inside their window, which a loaded machine can delay: poll
    required = ("Throughput", "Request latency", "Real-time factor", "Verdict mix", "Score distribution over time",
                "In flight and queued", "Overload rejections", "Pods serving", "Build and models", "Errors by code")
    deadline = time.monotonic() + 60
    while (missing := [t for t in required if t in _empty_panels(prom, dash)]) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert not missing, f"panels empty after real traffic: {missing}"


def test_rules_load_and_evaluate_without_errors(stack):
    _, prom, _ = stack
    groups = prom.api("rules")["data"]["groups"]
    names = {g["name"] for g in groups}
    assert names == {"whisper-guard.rules", "whisper-guard.alerts"}
    for g in groups:
        for r in g["rules"]:
            assert r["health"] in ("ok", "unknown"), (r["name"], r.get("lastError"))


def alerts_by_name(prom: Prometheus) -> dict[str, dict]:
    return {a["labels"]["alertname"]: a for a in prom.api("alerts")["data"]["alerts"]}


def test_overload_alert_goes_pending_and_down_follows_a_stopped_guard(stack):
    """Runs last: it stops the guard. 1 rejection in 8 requests is over the 1% overload ratio."""
    guard, prom, _ = stack
    deadline = time.monotonic() + 90  # rule evaluation and scrapes slip on a loaded 2-core machine
    while "WhisperGuardOverloaded" not in (active := alerts_by_name(prom)) and time.monotonic() < deadline:
        time.sleep(0.5)
    overload = active.get("WhisperGuardOverloaded")
    assert overload and overload["state"] == "pending" and overload["labels"]["job"] == "whisper-guard", active
    for quiet in ("WhisperGuardNotServing", "WhisperGuardDown", "WhisperGuardFallback", "WhisperGuardErrorRate",
                  "WhisperGuardHallucinationRateJump"):
        assert quiet not in active, active[quiet]
    assert guard.stop() == 0, "the guard should drain and exit 0 on SIGTERM"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        down = alerts_by_name(prom).get("WhisperGuardDown")
        if down:
            assert down["state"] == "pending" and down["labels"]["job"] == "whisper-guard"
            assert prom.value('up{job="whisper-guard"}') == 0
            return
        time.sleep(0.5)
    raise AssertionError("WhisperGuardDown never went pending after the guard stopped")

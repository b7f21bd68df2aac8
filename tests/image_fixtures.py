"""Shared pieces of the image test and benchmarks/image.py: podman, the image, a container run
the way deploy/k8s/base/deployment.yaml runs the guard sidecar.

Needs a host prepared by deploy/scripts/prepare-image-engine.sh (podman, runc, the local
bookworm base); `engine_not_ready()` says why not otherwise.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "deploy" / "scripts"
DEPLOYMENT = REPO / "deploy" / "k8s" / "base" / "deployment.yaml"
GRPC_PORT, METRICS_PORT = 50051, 9464
BUILD_TIMEOUT = 1500  # s: a cold build on a loaded 2-core host took ~4 min; the lock may wait for another


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {out.returncode}:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out


def engine_not_ready() -> str | None:
    """None when podman and the local base are ready, else why not (what to run)."""
    if shutil.which("podman") is None:
        return "podman is not installed: run deploy/scripts/prepare-image-engine.sh (Debian, root)"
    out = subprocess.run(["bash", str(SCRIPTS / "prepare-image-engine.sh"), "--check"], capture_output=True,
                         text=True, timeout=60)
    return None if out.returncode == 0 else (out.stdout + out.stderr).strip()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def build_image(tag: str, *, extras: str = "", models: str = "tiny.en",
                timeout: float = BUILD_TIMEOUT) -> tuple[float, str]:
    """deploy/scripts/build-image.sh: (seconds, log). Raises with the log's tail on failure."""
    t0 = time.monotonic()
    out = subprocess.run(["bash", str(SCRIPTS / "build-image.sh"), "--tag", tag, "--extras", extras,
                          "--models", models], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise AssertionError(f"image build failed ({out.returncode}):\n{log[-6000:]}")
    return time.monotonic() - t0, log


def remove_image(tag: str) -> None:
    podman("rmi", "--force", tag, check=False, timeout=120)


def image_size(tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())


def image_config(tag: str) -> dict:
    return json.loads(podman("image", "inspect", tag).stdout)[0]


def sidecar_spec() -> dict:
    """The guard container of the example Deployment (env, resources, securityContext)."""
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    guard = next(c for c in pod["initContainers"] if c["name"] == "whisper-guard")
    return {"pod": pod, "container": guard}


def _quantity_bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", q)
    return int(m.group(1)) * {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}[m.group(2)]


@dataclass
class Container:
    """A detached `podman run` of the image, as the sidecar manifest runs it; ports on 127.0.0.1."""
    image: str
    name: str = field(default_factory=lambda: unique_name("whisper-guard-test"))
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()  # container ports published on 127.0.0.1; default: the manifest's
    started: float = 0.0  # time.monotonic() just before `podman run`

    def run_args(self) -> list[str]:
        spec = sidecar_spec()
        pod, guard = spec["pod"], spec["container"]
        sc, psc = guard["securityContext"], pod["securityContext"]
        args = ["run", "--detach", "--name", self.name,
                "--user", f"{psc['runAsUser']}:{psc['runAsGroup']}",
                *(a for p in self.ports or [p["containerPort"] for p in guard["ports"]]
                  for a in ("--publish", f"127.0.0.1::{p}")),  # random free host ports
                # no systemd here for podman's healthcheck timers: the tests run the HEALTHCHECK by hand
                "--health-interval", "disable"]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if any(m["mountPath"] == "/tmp" for m in guard.get("volumeMounts", [])):
            args += ["--tmpfs", "/tmp:rw,size=256m,mode=1777"]  # the manifest's emptyDir (sizeLimit 256Mi)
        args += [f"--cap-drop={c}" for c in sc["capabilities"]["drop"]]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        limits = guard["resources"]["limits"]
        args += ["--memory", str(_quantity_bytes(limits["memory"])), "--cpus", str(limits["cpu"])]
        env = {e["name"]: e["value"] for e in guard.get("env", [])} | self.env
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        return [*args, self.image, *guard.get("args", [])]

    def start(self) -> Container:
        self.started = time.monotonic()
        podman(*self.run_args(), timeout=120)
        return self

    def host_port(self, port: int) -> int:
        out = podman("port", self.name, f"{port}/tcp").stdout.strip().splitlines()[0]
        return int(out.rpartition(":")[2])

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.host_port(GRPC_PORT)}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port(METRICS_PORT)}/metrics"

    def logs(self) -> str:
        out = podman("logs", self.name, check=False, timeout=60)
        return out.stdout + out.stderr

    def state(self) -> dict:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def wait_exit(self, timeout: float) -> int:
        """The exit code once the container has stopped (raises TimeoutError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state["Status"] in ("exited", "stopped"):
                return int(state["ExitCode"])
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} still running after {timeout} s:\n{self.logs()[-3000:]}")

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *cmd, timeout=timeout, check=False)

    def memory_bytes(self) -> dict[str, int]:
        """Memory now: the container cgroup as `podman stats` reports it, and the guard's own RSS."""
        stats = json.loads(podman("stats", "--no-stream", "--no-reset", "--format", "json", self.name).stdout)[0]
        status = self.exec("cat", "/proc/1/status").stdout
        rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
        return {"cgroup": _human_bytes(stats["mem_usage"].split("/")[0].strip()), "rss": rss_kb * 1024}

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False, timeout=120)


def _human_bytes(text: str) -> int:
    m = re.fullmatch(r"([\d.]+)\s*([kMGT]?B)", text.strip())
    if not m:
        raise ValueError(f"cannot read a size from podman stats: {text!r}")
    return int(float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[m.group(2)])


def wait_serving(client, container: Container, timeout: float = 240) -> float:
    """Seconds from `podman run` to the first health SERVING; fails with the logs if the container exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # not listening yet
            if client.health(timeout=2) == "SERVING":
                return time.monotonic() - container.started
        if container.state()["Status"] not in ("running", "created", "configured"):
            raise AssertionError(f"container exited before SERVING:\n{container.logs()[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"not SERVING after {timeout} s:\n{container.logs()[-4000:]}")

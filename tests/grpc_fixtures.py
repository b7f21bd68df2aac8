"""Shared pieces of the gRPC tests: real servers on loopback around the session's real Guard.

The Guard (model load: seconds) is conftest's session fixture `guard`; every in-process server
the gRPC tests start shares it, each with its own settings, admission and metrics.
"""
from __future__ import annotations

import contextlib
import functools
import io
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import grpc

from guard.audio import decode_file, to_pcm16
from guard.config import Settings
from guard.metrics import GuardMetrics
from guard.transports.grpc.server import GuardServer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SPEECH = FIXTURES / "speech-agent-alreadyon.flac"
SPEECH_TEXT = "That agent is already logged on. Please enter your agent number followed by the pound key."
NONSPEECH = FIXTURES / "nonspeech-music.flac"  # a 2 s tabla loop; tiny.en writes "Thanks for watching!"
# 36 s: 11 s of prompts, then music that tiny.en fills with "Thank you..." (2 windows)
SPEECH_THEN_MUSIC = FIXTURES / "mixture-speech-then-music-36s.flac"
SAMPLE_RATE = 16000


@functools.cache
def pcm16(path: Path) -> bytes:
    """A clip as 16 kHz mono little-endian PCM16 (what the streaming tests send)."""
    return to_pcm16(decode_file(path, max_seconds=3600))  # exact: the samples the file decodes to


def seconds_of(pcm: bytes) -> float:
    return len(pcm) / 2 / SAMPLE_RATE


def wav_bytes(pcm: bytes, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono PCM16 wrapped in a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return out.getvalue()


@contextlib.contextmanager
def running_server(guard, **overrides) -> Iterator[GuardServer]:
    """A real GuardServer on 127.0.0.1 (ephemeral port) around `guard` (conftest's session Guard)."""
    settings = Settings(**{"address": "127.0.0.1:0", "metrics_address": "", **overrides})
    server = GuardServer(settings, guard=guard, metrics=GuardMetrics())
    server.start()
    try:
        yield server
    finally:
        server.stop(0)


def sample_value(server: GuardServer, name: str, **labels) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    """Call `fn`, expect a grpc.RpcError, return it."""
    try:
        result = fn(*args, **kwargs)
        if hasattr(result, "__next__"):  # a streaming reply: drain it
            list(result)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"expected an RPC error from {getattr(fn, '__name__', fn)}")


# ---- a throwaway certificate authority -------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    return cert, key


def issue(directory: Path, ca: tuple[Path, Path], name: str, *, server: bool) -> tuple[Path, Path]:
    """A leaf certificate signed by `ca`: (cert, key). Server certs name localhost and 127.0.0.1."""
    cert, key, csr, ext = (directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr",
                           directory / f"{name}.ext")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name}", cwd=directory)
    usage = "serverAuth" if server else "clientAuth"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature", f"extendedKeyUsage={usage}"]
    if server:
        lines.append("subjectAltName=DNS:localhost,IP:127.0.0.1")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=directory)
    return cert, key

"""Shared test fixtures: paths, and one real tiny.en guard per test session (loading takes seconds)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
BENCH = Path(os.environ.get("WHISPER_GUARD_BENCH", ROOT.parent / "shared" / "bench"))
SPEECH = FIXTURES / "speech-agent-alreadyon.flac"
SPEECH_TEXT = "That agent is already logged on. Please enter your agent number followed by the pound key."
MUSIC = FIXTURES / "nonspeech-music.flac"
SFX = FIXTURES / "nonspeech-sfx.flac"
LONG = FIXTURES / "mixture-speech-then-music-36s.flac"

np.seterr(all="ignore")


@pytest.fixture(scope="session")
def guard():
    from guard.config import Settings
    from guard.pipeline import Guard

    return Guard(Settings(model="tiny.en", max_concurrent=2))


@pytest.fixture(scope="session")
def load_audio():
    from guard.audio import decode_file

    return lambda path: decode_file(path, max_seconds=600)


def bench_available() -> bool:
    return (BENCH / "manifest.jsonl").is_file()


@pytest.fixture(scope="session")
def peer():
    """faster-whisper-server 0.0.3 (its own venv, tests/peers.py) on loopback with the local tiny.en,
    model loaded. CI must have it (`make test` runs deploy/scripts/ensure-peer.sh); a dev box skips."""
    from peers import peer_available, peer_server

    from guard.models import resolve

    if (why := peer_available()) is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    model = resolve("tiny.en", cache=Path(os.environ.get("TMPDIR", "/tmp")) / "whisper-guard-test-cache")
    with peer_server(model.path, warm=SPEECH) as p:
        yield p

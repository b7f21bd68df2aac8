"""Shared test fixtures: paths, and one real tiny.en guard per test session (loading takes seconds)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from guard.corpus import bench_dir

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
BENCH = bench_dir()  # $WHISPER_GUARD_BENCH, else ../shared/bench; absent on a public clone
SPEECH = FIXTURES / "speech-agent-alreadyon.flac"
SPEECH_TEXT = "That agent is already logged on. Please enter your agent number followed by the pound key."
MUSIC = FIXTURES / "nonspeech-music.flac"
SFX = FIXTURES / "nonspeech-sfx.flac"
LONG = FIXTURES / "mixture-speech-then-music-36s.flac"

np.seterr(all="ignore")


def is_speech_text(text: str, reference: str = SPEECH_TEXT, min_ratio: float = 0.9) -> bool:
    """`text` says `reference` (normalised words, 90% alike): what a test may ask of a decode.

    CTranslate2's int8 kernels differ between CPUs (Intel, AMD), so a test never pins one
    machine's exact transcript (punctuation, segmentation, a borderline word), only that the
    speech was heard."""
    import difflib

    from guard.labels import words

    ratio = difflib.SequenceMatcher(None, words(text, "en"), words(reference, "en")).ratio()
    if ratio < min_ratio:
        print(f"is_speech_text: {text!r} vs {reference!r}: {ratio:.2f} < {min_ratio}")
    return ratio >= min_ratio


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


# Tests that read the corpus use this decorator: they skip (saying why) where it is absent, and
# carry the `corpus` mark so that `.ci/run` can run them on their own with the corpus after
# `make test` has passed with the corpus location pointed at an empty folder.
def needs_corpus(test):
    skip = pytest.mark.skipif(not bench_available(),
                              reason=f"needs the corpus: {BENCH}/manifest.jsonl is absent (set WHISPER_GUARD_BENCH)")
    return pytest.mark.corpus(skip(test))


def prometheus_binary(name: str) -> str | None:
    """`prometheus` or `promtool`: $PROMETHEUS (the prometheus binary; promtool beside it, or
    $PROMTOOL) wins over PATH, the same rule as deploy/scripts/ensure-prometheus.sh."""
    explicit = os.environ.get(name.upper())
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if name == "promtool" and os.environ.get("PROMETHEUS"):
        sibling = Path(os.environ["PROMETHEUS"]).with_name("promtool")
        if os.access(sibling, os.X_OK):
            return str(sibling)
    return shutil.which(name)

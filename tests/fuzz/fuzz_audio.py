#!/usr/bin/env python
"""Coverage-guided fuzzing of guard.audio with atheris (libFuzzer for Python).

Every input goes to `decode_bytes` and, with a sample rate / channel count taken from its first
bytes, to `from_pcm16`. The contract: a valid 16 kHz mono float32 array in [-1, 1] that respects
the length cap, or a `guard.errors.AudioError`. Anything else (another exception, a NaN, a crash
in FFmpeg) is a finding. See tests/fuzz/README.md for how to run it.
"""
import contextlib
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from guard import audio
    from guard.errors import AudioError

import numpy as np

MAX_SECONDS = 30.0


def _check(y: np.ndarray) -> None:
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1, (type(y), getattr(y, "dtype", None))
    assert y.size > 0 and y.flags.c_contiguous
    assert np.isfinite(y).all() and float(np.abs(y).max()) <= 1.0
    assert y.size <= MAX_SECONDS * audio.SAMPLE_RATE + 160, y.size


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(AudioError):  # the one documented failure; anything else escapes
        _check(audio.decode_bytes(data, max_seconds=MAX_SECONDS))
    fdp = atheris.FuzzedDataProvider(data)
    rate = fdp.ConsumeIntInRange(0, 400_000)
    channels = fdp.ConsumeIntInRange(0, 34)
    with contextlib.suppress(AudioError):
        _check(audio.from_pcm16(fdp.ConsumeBytes(fdp.remaining_bytes()), rate, channels=channels,
                                max_seconds=MAX_SECONDS))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

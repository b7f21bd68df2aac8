"""Property tests for guard.audio: whatever the input, the result is a valid 16 kHz mono float32
array within the length cap, or an AudioError (AudioTooLong included). Nothing else escapes.

Budgets are fixed and derandomized so CI runs are reproducible; the whole file runs well under a
minute on one core. The longer, coverage-guided campaign lives in tests/fuzz/ (atheris).
"""
from __future__ import annotations

import faulthandler
import importlib.util
import io
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from guard.audio import SAMPLE_RATE, check_samples, decode_bytes, from_pcm16
from guard.errors import AudioError, AudioTooLong, Kind

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "audio"
REAL = HERE / "fixtures" / "speech-agent-alreadyon.flac"  # a real recording (committed fixture)

SEEDS = {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("tone.*"))}
SEEDS["real.flac"] = REAL.read_bytes()
NAMES = sorted(SEEDS)
MAGICS = [b"RIFF\x24\x00\x00\x00WAVEfmt ", b"OggS\x00\x02", b"fLaC\x00\x00\x00\x22", b"ID3\x04\x00\x00",
          b"\xff\xfb\x90\x64", b"\xff\xf1\x50\x80", b"\x1a\x45\xdf\xa3", b"\x00\x00\x00\x20ftypM4A ",
          b"FORM\x00\x00\x00\x00AIFF", b"caff\x00\x01\x00\x00", b".snd", b"#!AMR\n", b"wvpk", b"MAC "]

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_S = 30.0


@pytest.fixture(autouse=True)
def hang_guard():
    """A hang inside FFmpeg cannot be interrupted from Python: dump stacks and exit instead."""
    faulthandler.dump_traceback_later(240, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def outcome(fn, *args, max_seconds: float = MAX_S, **kwargs):
    """Call fn; return the array or the AudioError, failing on anything else or an invalid array."""
    try:
        y = fn(*args, max_seconds=max_seconds, **kwargs)
    except AudioError as e:
        assert e.message and e.kind in (Kind.bad_audio, Kind.too_long)
        return e
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1
    assert y.size > 0 and y.flags.c_contiguous
    assert np.isfinite(y).all() and float(np.abs(y).max()) <= 1.0
    assert y.size <= max_seconds * SAMPLE_RATE + 160, f"{y.size / SAMPLE_RATE:.3f} s over a {max_seconds} s cap"
    return y


def test_seed_corpus_is_valid():
    assert len(NAMES) >= 8  # the property tests below are only as good as their seeds
    for name in NAMES:
        assert isinstance(outcome(decode_bytes, SEEDS[name]), np.ndarray), name


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    outcome(decode_bytes, data)


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_random_bytes_behind_a_real_magic(magic, data):
    outcome(decode_bytes, magic + data)


@FUZZ
@given(st.sampled_from(NAMES), st.floats(0, 1))
def test_truncated_files(name, fraction):
    data = SEEDS[name]
    r = outcome(decode_bytes, data[: int(len(data) * fraction)])
    if fraction == 0:
        assert isinstance(r, AudioError) and "empty" in r.message


@FUZZ
@given(st.sampled_from(NAMES), st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), min_size=1, max_size=8))
def test_bit_flipped_files(name, flips):
    data = bytearray(SEEDS[name])
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    outcome(decode_bytes, bytes(data))


@FUZZ
@given(st.sampled_from(NAMES), st.sampled_from(NAMES), st.integers(4, 256))
def test_mislabelled_containers(head_from, body_from, cut):
    """The first bytes of one format glued onto the rest of another (an ogg header on wav data...)."""
    head, body = SEEDS[head_from], SEEDS[body_from]
    outcome(decode_bytes, head[:cut] + body[cut:])


@FUZZ
@given(st.sampled_from(NAMES), st.sampled_from(MAGICS))
def test_wrong_magic(name, magic):
    data = SEEDS[name]
    outcome(decode_bytes, magic + data[len(magic):])


@FUZZ
@given(st.sampled_from(NAMES), st.sampled_from([0.05, 0.2, 1.0]))
def test_length_cap_holds_on_every_path(name, cap):
    r = outcome(decode_bytes, SEEDS[name], max_seconds=cap)
    if isinstance(r, AudioError):
        assert isinstance(r, AudioTooLong) and f"{cap:g} s" in r.message


RATES = st.one_of(st.integers(-(2**31), 2**31), st.integers(3990, 4010), st.integers(383990, 384010),
                  st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000]))
ODD = st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=6), st.booleans())


@FUZZ
@given(st.binary(max_size=8192), st.one_of(RATES, ODD), st.one_of(st.integers(-3, 40), ODD),
       st.sampled_from([0.01, 0.25, MAX_S]))
def test_random_pcm(data, rate, channels, cap):
    r = outcome(from_pcm16, data, rate, channels=channels, max_seconds=cap)
    valid = (type(rate) is int and 4000 <= rate <= 384000 and type(channels) is int and 1 <= channels <= 32
             and len(data) and len(data) % (2 * channels) == 0)
    if isinstance(r, np.ndarray):
        assert r.size == round(len(data) // (2 * channels) * SAMPLE_RATE / rate)  # exact output length
    elif valid:  # a valid request fails only for its length
        assert isinstance(r, AudioTooLong) or (round(len(data) // (2 * channels) * SAMPLE_RATE / rate) == 0
                                               and "no audio samples" in r.message), r
    else:
        assert type(r) is AudioError


FLOATS = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=600)


@FUZZ
@given(FLOATS)
def test_float_bit_patterns_as_pcm16(values):
    """NaN/inf float32 bit patterns reinterpreted as PCM16 are just integers: always valid."""
    raw = np.array(values, dtype="<f4").tobytes()
    assert isinstance(outcome(from_pcm16, raw, 16000), np.ndarray)


def _float_wav(x: np.ndarray) -> bytes:
    data = x.astype("<f4").tobytes()
    fmt = np.array([3, 1], "<u2").tobytes() + np.array([16000, 64000], "<u4").tobytes() + np.array([4, 32], "<u2").tobytes()
    return (b"RIFF" + np.uint32(4 + 24 + 8 + len(data)).tobytes() + b"WAVEfmt " + np.uint32(16).tobytes() + fmt
            + b"data" + np.uint32(len(data)).tobytes() + data)


@FUZZ
@given(FLOATS)
def test_float_wav_with_nan_and_inf(values):
    x = np.array(values, np.float32)
    r = outcome(decode_bytes, _float_wav(x))
    if np.isfinite(x).all():
        np.testing.assert_array_equal(r, np.clip(x, -1, 1))
    else:
        assert type(r) is AudioError and "NaN or infinite" in r.message


@FUZZ
@given(st.one_of(FLOATS.map(lambda v: np.array(v, np.float32)), FLOATS.map(lambda v: np.array(v, np.float64)),
                 st.lists(st.integers(-40000, 40000), max_size=50).map(lambda v: np.array(v, np.int32))))
def test_check_samples(x):
    r = outcome(check_samples, x)
    if isinstance(r, np.ndarray):
        np.testing.assert_array_equal(r, np.clip(x.astype(np.float32), -1, 1))
    else:
        assert (x.dtype.kind != "f" or x.size == 0 or not np.isfinite(x).all() or np.abs(x).max() > 2), r


@FUZZ
@given(st.binary(min_size=2, max_size=4000), st.sampled_from([8000, 16000, 22050, 44100, 48000]), st.integers(1, 2))
def test_wav_and_raw_pcm_paths_agree(data, rate, channels):
    """The same PCM through a stdlib-written WAV (FFmpeg demux + swr downmix) and through
    from_pcm16 (numpy average) gives the same signal."""
    data = data[: len(data) - len(data) % (2 * channels)]
    assume(data)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data)
    a, b = outcome(decode_bytes, buf.getvalue()), outcome(from_pcm16, data, rate, channels=channels)
    if round(len(data) // (2 * channels) * SAMPLE_RATE / rate) == 0:  # under one output sample
        assert isinstance(a, AudioError) and isinstance(b, AudioError) and a.message == b.message
        return
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    assert a.size == b.size
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_zero_length_everywhere():
    assert "empty" in outcome(decode_bytes, b"").message
    assert "empty" in outcome(from_pcm16, b"", 16000).message
    assert "empty" in outcome(check_samples, np.zeros(0, np.float32)).message


FUZZ_SCRIPT = HERE / "fuzz" / "fuzz_audio.py"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install atheris; see tests/fuzz/README.md)")
def test_atheris_harness_short_run(tmp_path):
    """2,000 coverage-guided executions seeded with the committed fixtures; any finding fails."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    (tmp_path / "corpus").mkdir()
    proc = subprocess.run(
        [sys.executable, str(FUZZ_SCRIPT), "-atheris_runs=2000", "-seed=1", "-timeout=60",
         "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus"), str(FIXTURES)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done 2000" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))

"""guard.audio: real corpus files and files encoded here with PyAV decode to correct 16 kHz mono
float32; every bad input gives the right typed error with a useful message; bombs stop early."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import struct
import threading
import time
import tracemalloc
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest

from guard import audio
from guard.audio import SAMPLE_RATE, check_samples, decode_bytes, decode_file, duration, from_pcm16
from guard.errors import AudioError, AudioTooLong, Kind

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "audio"

_spec = importlib.util.spec_from_file_location("whisper_guard_audio_seeds", HERE / "fuzz" / "seeds.py")
seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeds)

# real recordings committed under tests/fixtures (copies of corpus clips; see tests/fixtures/LICENSES.md)
SPEECH = HERE / "fixtures" / "speech-agent-alreadyon.flac"
SPEECH_SAMPLES = 88262  # its FLAC header's total_samples (5.516375 s at 16 kHz), as the corpus manifest says
LONG_MIX = HERE / "fixtures" / "mixture-speech-then-music-36s.flac"  # 35.9575 s


def reference_pcm(path: Path) -> np.ndarray:
    """Decode a 16 kHz mono s16 FLAC another way: raw decoder frames, no resampler, /32768."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray() for f in c.decode(audio=0)]
        assert c.streams.audio[0].codec_context.sample_rate == SAMPLE_RATE
    pcm = np.concatenate([f.reshape(-1) for f in frames])
    assert pcm.dtype == np.int16
    return pcm


def wav_bytes(pcm: np.ndarray, rate: int, channels: int = 1) -> bytes:
    """PCM16 WAV written by the standard library (independent of FFmpeg)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
    return buf.getvalue()


def float_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """IEEE-float WAV (format tag 3), hand-built so it can carry NaN/inf."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


def flac_with_total_samples(data: bytes, total: int) -> bytes:
    """Rewrite the 36-bit total-samples field of FLAC STREAMINFO (0 = unknown)."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # first metadata block is STREAMINFO
    b = bytearray(data)
    v = int.from_bytes(b[18:26], "big")
    b[18:26] = ((v & ~((1 << 36) - 1)) | total).to_bytes(8, "big")
    return bytes(b)


def silent_flac(seconds: int, rate: int = 8000) -> bytes:
    """Digital silence in FLAC with 65535-sample blocks: an hour is ~14 KB."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        st = out.add_stream("flac", rate=rate, layout="mono", options={"frame_size": "65535"})
        st.codec_context.format = "s16"
        zeros = np.zeros((1, 65535), np.int16)
        pts, n = 0, rate * seconds
        while pts < n:
            f = av.AudioFrame.from_ndarray(zeros[:, : min(65535, n - pts)], format="s16", layout="mono")
            f.sample_rate, f.pts = rate, pts
            pts += f.samples
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    return buf.getvalue()


def assert_valid(y: np.ndarray) -> None:
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1
    assert y.flags.c_contiguous and y.size > 0
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0


def tone_stats(y: np.ndarray) -> tuple[float, float]:
    """(peak amplitude estimated from RMS, dominant frequency in Hz) over the middle 60%."""
    n = len(y)
    mid = y[n // 5: n - n // 5].astype(np.float64)
    spec = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    return float(np.sqrt(np.mean(mid**2)) * np.sqrt(2)), float(np.argmax(spec) * SAMPLE_RATE / len(mid))


# --- real corpus files -----------------------------------------------------------------------


def test_real_flac_matches_its_header_and_raw_decode():
    y = decode_file(SPEECH, max_seconds=60)
    assert_valid(y)
    assert len(y) == SPEECH_SAMPLES
    ref = reference_pcm(SPEECH).astype(np.float32) / 32768.0
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-6)
    assert np.sqrt(np.mean(y**2)) > 0.01  # real speech, not silence
    assert np.array_equal(decode_bytes(SPEECH.read_bytes(), max_seconds=60), y)


def test_real_pcm_through_stdlib_wav_and_raw_pcm_paths_agree():
    pcm = reference_pcm(SPEECH)
    y = decode_file(SPEECH, max_seconds=60)
    np.testing.assert_array_equal(decode_bytes(wav_bytes(pcm, 16000), max_seconds=60), y)
    np.testing.assert_array_equal(from_pcm16(pcm.tobytes(), 16000, max_seconds=60), y)
    # the same signal on both channels averages back to itself
    stereo = np.repeat(pcm, 2)
    np.testing.assert_allclose(decode_bytes(wav_bytes(stereo, 16000, 2), max_seconds=60), y, atol=1e-6)
    np.testing.assert_allclose(from_pcm16(stereo.tobytes(), 16000, channels=2, max_seconds=60), y, atol=1e-6)


def test_digital_silence_is_all_zeros():
    y = decode_bytes(silent_flac(5, rate=16000), max_seconds=60)
    assert_valid(y)
    assert duration(y) == pytest.approx(5.0, abs=1e-3)
    assert not y.any()


def test_real_file_over_limit_is_rejected_on_its_header():
    with pytest.raises(AudioTooLong, match=r"declares 35\.9\d s; the limit is 10 s"):
        decode_file(LONG_MIX, max_seconds=10)
    assert duration(decode_file(LONG_MIX, max_seconds=40)) == pytest.approx(35.9575, abs=1e-3)


# --- files encoded here ----------------------------------------------------------------------

LOSSLESS = {"wav", "f32.wav", "flac"}


@pytest.mark.parametrize("name", list(seeds.FORMATS))
def test_encoded_formats_decode_to_16k_mono(name):
    muxer, codec, rate, layout, options = seeds.FORMATS[name]
    if not seeds.can_encode(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder")
    data = seeds.make_fixture(name, seconds=1.5)
    y = decode_bytes(data, max_seconds=10)
    assert_valid(y)
    lossless = name in LOSSLESS
    # lossy codecs add priming/padding (AAC, Vorbis) of up to ~0.1 s
    assert duration(y) == pytest.approx(1.5, abs=1e-3 if lossless else 0.1)
    amp, freq = tone_stats(y)
    # stereo files carry 0.6 and 0.2 on the two channels; mono ones 0.4: both must come out at 0.4
    assert amp == pytest.approx(0.4, rel=0.01 if lossless else 0.08)
    assert freq == pytest.approx(440.0, abs=2.0)  # a wrong output rate would move the tone


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_wav_matches_analytic_signal(rate):
    x = seeds.sine(rate, 1.0, 0.5, 1000.0)
    pcm = np.round(x * 32767).astype(np.int16)
    y = decode_bytes(wav_bytes(np.stack([pcm, pcm // 3], axis=1).reshape(-1), rate, 2), max_seconds=5)
    assert len(y) == SAMPLE_RATE
    expected = seeds.sine(SAMPLE_RATE, 1.0, 0.5 * (1 + 1 / 3) / 2, 1000.0)
    np.testing.assert_allclose(y[400:-400], expected[400:-400], atol=2e-3)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("tone.*")))
def test_committed_fixtures_decode(name):
    y = decode_file(FIXTURES / name, max_seconds=5)
    assert_valid(y)
    amp, freq = tone_stats(y)
    assert amp == pytest.approx(0.4, rel=0.08)
    assert abs(freq - 440) < 10  # 0.1 s wav fixtures have a coarse FFT grid


def test_sample_rate_change_mid_stream_restarts_the_resampler():
    a = seeds.encode(seeds.sine(44100, 1.0, 0.5)[None], 44100, "adts", "aac")
    b = seeds.encode(np.stack([seeds.sine(22050, 1.0, 0.5)] * 2), 22050, "adts", "aac", "stereo")
    y = decode_bytes(a + b, max_seconds=10)  # concatenated ADTS streams: 44.1 kHz mono, then 22.05 kHz stereo
    assert_valid(y)
    assert duration(y) == pytest.approx(2.0, abs=0.2)
    for half in (y[: len(y) // 2], y[len(y) // 2:]):
        amp, freq = tone_stats(half)
        assert amp == pytest.approx(0.5, rel=0.08) and freq == pytest.approx(440, abs=3)


@pytest.mark.parametrize("rate,ok", [(3999, False), (4000, True), (384000, True), (384001, False)])
def test_file_sample_rate_bounds(rate, ok):
    data = wav_bytes(np.zeros(rate // 10, np.int16), rate)
    if ok:
        assert duration(decode_bytes(data, max_seconds=1)) == pytest.approx(0.1, abs=1e-4)
    else:
        with pytest.raises(AudioError, match=rf"audio sample rate {rate} Hz is outside \[4000, 384000\] Hz"):
            decode_bytes(data, max_seconds=1)


def test_many_channel_file_is_downmixed():
    tone = np.round(seeds.sine(16000, 0.5, 0.5) * 32767).astype(np.int16)
    y = decode_bytes(wav_bytes(np.repeat(tone, 8), 16000, 8), max_seconds=1)  # 7.1 layout
    assert_valid(y)
    amp, freq = tone_stats(y)
    assert freq == pytest.approx(440, abs=2) and 0.2 < amp <= 0.51  # swr's 7.1 matrix, normalised


def test_float_wav_over_full_scale_is_clipped():
    x = np.array([0.0, 1.5, -3.0, 0.25] * 1000, np.float32)
    y = decode_bytes(float_wav(x), max_seconds=5)
    np.testing.assert_array_equal(y, np.clip(x, -1, 1))


def test_unsigned_8bit_wav_matches_the_pcm16_path():
    """u8 PCM is centred on 128: the resampler's end padding must be u8 silence, not -1.0."""
    u8 = np.round(128 + 100 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)).astype(np.uint8)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(u8.tobytes())
    y = decode_bytes(buf.getvalue(), max_seconds=5)
    pcm16 = ((u8.astype(np.int16) - 128) * 256).astype("<i2")
    np.testing.assert_allclose(y, from_pcm16(pcm16.tobytes(), 8000, max_seconds=5), atol=1e-4)


# --- raw PCM16 --------------------------------------------------------------------------------


def test_pcm16_mono_16k_is_exact():
    pcm = np.array([0, 1, -1, 32767, -32768, 12345], np.int16)
    y = from_pcm16(pcm.tobytes(), 16000, max_seconds=1)
    assert_valid(y)
    np.testing.assert_array_equal(y, pcm.astype(np.float32) / 32768)
    assert y.min() == -1.0


@pytest.mark.parametrize("rate,channels", [(4000, 1), (8000, 2), (44100, 3), (48000, 6), (384000, 1)])
def test_pcm16_resamples_and_downmixes(rate, channels):
    tone = seeds.sine(rate, 0.5, 0.5, 440.0)
    gains = np.linspace(0.4, 1.6, channels) if channels > 1 else np.ones(1)  # mean gain 1.0
    pcm = np.round(tone[:, None] * gains[None, :] * 32767).astype("<i2")
    y = from_pcm16(pcm.tobytes(), rate, channels=channels, max_seconds=1)
    assert_valid(y)
    assert len(y) == SAMPLE_RATE // 2
    np.testing.assert_allclose(y[200:-200], seeds.sine(SAMPLE_RATE, 0.5, 0.5)[200:-200], atol=3e-3)


def test_pcm16_accepts_bytearray_memoryview_and_numpy_int():
    pcm = np.arange(-100, 100, dtype="<i2").tobytes()
    ref = from_pcm16(pcm, 16000, max_seconds=1)
    np.testing.assert_array_equal(from_pcm16(bytearray(pcm), np.int64(16000), max_seconds=1), ref)
    np.testing.assert_array_equal(from_pcm16(memoryview(pcm), 16000, channels=np.int32(1), max_seconds=1), ref)
    strided = np.repeat(np.arange(-100, 100, dtype="<i2"), 2)[::2]  # a non-contiguous buffer
    np.testing.assert_array_equal(from_pcm16(memoryview(strided), 16000, max_seconds=1), ref)


@pytest.mark.parametrize("data,rate,channels,match", [
    (b"", 16000, 1, "empty audio"),
    (b"\x00" * 1001, 16000, 1, r"raw PCM16 needs an even number of bytes; got 1001"),
    (b"\x00" * 6, 16000, 2, r"2 interleaved channels needs a multiple of 4 bytes; got 6"),
    (b"\x00" * 4, 3999, 1, r"sample_rate must be an integer in \[4000, 384000\] Hz; got 3999"),
    (b"\x00" * 4, 384001, 1, r"got 384001"),
    (b"\x00" * 4, 0, 1, r"sample_rate .* got 0"),
    (b"\x00" * 4, -16000, 1, r"sample_rate .* got -16000"),
    (b"\x00" * 4, 16000.0, 1, r"sample_rate must be an integer .* got 16000\.0"),
    (b"\x00" * 4, "16000", 1, r"sample_rate .* got '16000'"),
    (b"\x00" * 4, True, 1, r"sample_rate .* got True"),
    (b"\x00" * 4, 16000, 0, r"channels must be an integer in \[1, 32\]; got 0"),
    (b"\x00" * 132, 16000, 33, r"channels .* got 33"),
    (b"\x00" * 4, 16000, 2.0, r"channels .* got 2\.0"),
    ("\x00\x00", 16000, 1, r"raw PCM16 must be bytes; got str"),
])
def test_pcm16_bad_input(data, rate, channels, match):
    with pytest.raises(AudioError, match=match) as info:
        from_pcm16(data, rate, channels=channels, max_seconds=10)
    assert type(info.value) is AudioError and info.value.kind is Kind.bad_audio


def test_pcm16_too_long_is_rejected_before_conversion():
    with pytest.raises(AudioTooLong, match=r"audio is 2\.00 s; the limit is 1\.5 s") as info:
        from_pcm16(b"\x00" * (2 * 8000 * 2 * 2), 8000, channels=2, max_seconds=1.5)
    assert info.value.kind is Kind.too_long
    assert len(from_pcm16(b"\x00" * (2 * 8000 * 2), 8000, channels=2, max_seconds=1.0)) == 16000  # exactly at the cap


# --- check_samples / duration ---------------------------------------------------------------


def test_check_samples_converts_and_passes_valid_audio():
    x = np.linspace(-1, 1, 1000)
    y = check_samples(x, max_seconds=1)
    assert_valid(y)
    np.testing.assert_allclose(y, x, atol=1e-7)
    strided = np.linspace(-0.5, 0.5, 2000, dtype=np.float32)[::2]
    y = check_samples(strided, max_seconds=1)
    assert y.flags.c_contiguous and np.array_equal(y, strided)
    ok = np.zeros(10, np.float32)
    assert check_samples(ok, max_seconds=1) is ok  # already valid: no copy
    hot = np.array([1.5, -1.2, 0.5], np.float32)
    np.testing.assert_array_equal(check_samples(hot, max_seconds=1), [1.0, -1.0, 0.5])
    assert hot[0] == 1.5  # the caller's array is not modified
    assert duration(np.zeros(24000, np.float32)) == 1.5


@pytest.mark.parametrize("samples,match", [
    ([0.0, 0.1], r"numpy array .* got list"),
    (np.zeros((2, 100), np.float32), r"1-D mono at 16000 Hz; got shape \(2, 100\)"),
    (np.zeros(100, np.int16), r"float32 or float64 .* got dtype int16 \(use from_pcm16"),
    (np.zeros(0, np.float32), r"empty audio: 0 samples"),
    (np.array([0.0, np.nan, 0.1], np.float32), r"1 NaN or infinite samples"),
    (np.array([0.0, np.inf, -np.inf], np.float64), r"2 NaN or infinite samples"),
    (np.array([0.0, 1e300], np.float64), r"peak is 1e\+300"),
    (np.array([0.0, 32767.0], np.float32), r"peak is 32767 \(integer PCM passed as float\? divide by 32768\)"),
])
def test_check_samples_bad_input(samples, match):
    with pytest.raises(AudioError, match=match) as info:
        check_samples(samples, max_seconds=10)
    assert type(info.value) is AudioError


def test_check_samples_too_long():
    with pytest.raises(AudioTooLong, match=r"audio is 2\.00 s; the limit is 1 s"):
        check_samples(np.zeros(32000, np.float32), max_seconds=1)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "10", None, True])
def test_bad_max_seconds_is_a_programming_error(bad):
    with pytest.raises(ValueError, match="max_seconds"):
        from_pcm16(b"\x00\x00", 16000, max_seconds=bad)


# --- bad containers ---------------------------------------------------------------------------


def test_empty_input():
    with pytest.raises(AudioError, match=r"empty audio: got 0 bytes"):
        decode_bytes(b"", max_seconds=10)


def test_not_bytes():
    with pytest.raises(AudioError, match=r"audio must be bytes; got str"):
        decode_bytes("RIFF", max_seconds=10)


@pytest.mark.parametrize("data", [
    b"\x00" * 1000,
    np.random.default_rng(0).bytes(4096),
    b"hello, this is not audio at all\n" * 20,
    b"RIFF\x00\x00\x00\x00WAVE",  # a header with nothing after it
    b"fLaC",
])
def test_garbage_is_an_audio_error_that_lists_formats(data):
    with pytest.raises(AudioError, match=r"accepted: WAV, FLAC") as info:
        decode_bytes(data, max_seconds=10)
    assert type(info.value) is AudioError


def test_wav_with_no_samples():
    with pytest.raises(AudioError, match="no audio samples could be decoded"):
        decode_bytes(wav_bytes(np.zeros(0, np.int16), 16000), max_seconds=10)


def test_container_without_audio_stream():
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        st = out.add_stream("ffv1", rate=5)
        st.width, st.height, st.pix_fmt = 16, 16, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    with pytest.raises(AudioError, match=r"no audio stream in the file \(found: video\)"):
        decode_bytes(buf.getvalue(), max_seconds=10)


def test_container_outside_the_allowlist_is_refused():
    ass = b"[Script Info]\nScriptType: v4.00+\n\n[Events]\nFormat: Layer, Start, End, Text\n" \
          b"Dialogue: 0,0:00:00.00,0:00:05.00,hello\n"
    with av.open(io.BytesIO(ass)) as c:  # FFmpeg alone would happily open it
        assert c.format.name == "ass"
    with pytest.raises(AudioError, match="not a readable audio file"):
        decode_bytes(ass, max_seconds=10)


def test_playlists_cannot_make_ffmpeg_open_other_files():
    target = str(SPEECH.resolve())
    for script in (f"ffconcat version 1.0\nfile '{target}'\n",
                   f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{target}\n#EXT-X-ENDLIST\n"):
        with pytest.raises(AudioError, match="not a readable audio file"):
            decode_bytes(script.encode(), max_seconds=60)


def test_nested_opens_are_refused_even_for_an_allowed_demuxer(monkeypatch):
    """Defence in depth: were a file-referencing demuxer ever allowlisted, it still cannot open files."""
    monkeypatch.chdir(FIXTURES)
    script = b"ffconcat version 1.0\nfile 'tone.flac'\n"
    with av.open(io.BytesIO(script), container_options={"format_whitelist": "concat,flac"}) as c:
        assert sum(f.samples for f in c.decode(audio=0)) == 8000  # plain FFmpeg follows the reference
    monkeypatch.setattr(audio, "_DEMUXERS", audio._DEMUXERS + ("concat",))
    with pytest.raises(AudioError, match="not a readable audio file"):
        decode_bytes(script, max_seconds=60)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.97])
def test_truncated_flac(fraction):
    data = SPEECH.read_bytes()
    with pytest.raises(AudioError, match=r"corrupt or truncated audio after \d+\.\d\d s \(ffmpeg: |audio is truncated or corrupt"):
        decode_bytes(data[: int(len(data) * fraction)], max_seconds=60)


def test_truncated_webm_is_detected_against_its_declared_duration():
    data = seeds.make_fixture("webm", seconds=3.0)
    assert duration(decode_bytes(data, max_seconds=10)) == pytest.approx(3.0, abs=0.02)
    with pytest.raises(AudioError, match=r"audio is truncated or corrupt: the header declares 3\.0\d s but only 1\.\d\d s"):
        decode_bytes(data[: len(data) // 2], max_seconds=10)


def test_bit_flipped_flac_is_corrupt():
    data = bytearray(SPEECH.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside an audio frame: its CRC no longer matches
    with pytest.raises(AudioError, match=r"corrupt or truncated audio after [1-9]|audio is truncated or corrupt: the header declares 5\.52 s but only 5\.26 s"):
        decode_bytes(bytes(data), max_seconds=60)


@pytest.mark.parametrize("bad,count", [(np.nan, 1), (np.inf, 1), (-np.inf, 1)])
def test_nan_or_inf_in_float_wav(bad, count):
    x = np.zeros(1600, np.float32)
    x[800] = bad
    with pytest.raises(AudioError, match=rf"audio contains {count} NaN or infinite samples"):
        decode_bytes(float_wav(x), max_seconds=10)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(AudioError, match=r"cannot read audio file .*nope\.wav.*No such file"):
        decode_file(tmp_path / "nope.wav", max_seconds=10)
    (tmp_path / "empty.flac").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty audio file .*empty\.flac.*0 bytes"):
        decode_file(tmp_path / "empty.flac", max_seconds=10)
    with pytest.raises(AudioError, match="cannot read audio file"):
        decode_file(tmp_path, max_seconds=10)  # a directory


def test_ffmpeg_url_syntax_in_a_path_is_just_a_file_name(tmp_path):
    # decode_file opens paths with Python, so FFmpeg protocols ("concat:", "http:") are not interpreted
    with pytest.raises(AudioError, match="cannot read audio file 'concat:"):
        decode_file(f"concat:{FIXTURES / 'tone.flac'}|{FIXTURES / 'tone.flac'}", max_seconds=10)


# --- length caps and decompression bombs ------------------------------------------------------


def test_declared_duration_over_the_cap_is_rejected_before_decoding():
    data = seeds.make_fixture("flac", seconds=3.0)
    assert duration(decode_bytes(data, max_seconds=3)) == 3.0
    with pytest.raises(AudioTooLong, match=r"audio declares 3\.00 s; the limit is 2\.5 s") as info:
        decode_bytes(data, max_seconds=2.5)
    assert info.value.kind is Kind.too_long


def test_lying_header_declaring_hours_is_rejected_on_the_header():
    data = flac_with_total_samples(SPEECH.read_bytes(), 16000 * 3600 * 10)  # 5.5 s of audio claiming 10 h
    with pytest.raises(AudioTooLong, match=r"audio declares 36000\.00 s; the limit is 60 s"):
        decode_bytes(data, max_seconds=60)


@pytest.fixture(scope="module")
def hour_of_silence() -> bytes:
    data = silent_flac(3600)
    assert len(data) < 50_000  # an hour of audio in a few KB
    return data


def test_bomb_with_honest_header(hour_of_silence):
    start = time.monotonic()
    with pytest.raises(AudioTooLong, match=r"declares 3600\.00 s"):
        decode_bytes(hour_of_silence, max_seconds=30)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("declared", [0, 8000 * 10])  # unknown length / a 10 s lie
def test_bomb_without_a_usable_header_stops_during_decode(hour_of_silence, declared):
    data = flac_with_total_samples(hour_of_silence, declared)
    tracemalloc.start()  # numpy buffers are traced: an hour at 16 kHz float32 would be 230 MB
    start = time.monotonic()
    try:
        with pytest.raises(AudioTooLong, match=r"longer than the 30 s limit \(stopped decoding at 3\d\.\d\d s\)"):
            decode_bytes(data, max_seconds=30)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"peak {peak / 1e6:.0f} MB: the bomb was decoded too far"
    assert elapsed < 10


def test_bomb_check_is_not_a_blanket_refusal(hour_of_silence):
    y = decode_bytes(flac_with_total_samples(silent_flac(40), 0), max_seconds=60)
    assert duration(y) == 40.0 and not y.any()


# --- concurrency and resource hygiene ---------------------------------------------------------


def _fixture_inputs() -> list[bytes]:
    return [p.read_bytes() for p in sorted(FIXTURES.glob("tone.*"))]


def test_concurrent_decodes_match_sequential_ones():
    inputs = _fixture_inputs() * 4
    expected = [decode_bytes(d, max_seconds=5) for d in inputs]
    barrier = threading.Barrier(4, timeout=60)

    def work(i: int) -> np.ndarray:
        if i < 4:
            barrier.wait()
        return decode_bytes(inputs[i], max_seconds=5)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(len(inputs))))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_no_file_descriptors_leak(tmp_path):
    good = FIXTURES / "tone.flac"
    bad = tmp_path / "bad.flac"
    bad.write_bytes(good.read_bytes()[: 3000])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 500)
    for p in (good, bad, junk):  # warm up lazily opened library files
        with contextlib.suppress(AudioError):
            decode_file(p, max_seconds=5)
    before = len(os.listdir("/proc/self/fd"))
    kept = []  # keeping the errors keeps their tracebacks' frames alive: only explicit closing helps
    for _ in range(20):
        for p in (good, bad, junk):
            try:
                decode_file(p, max_seconds=5)
            except AudioError as e:
                kept.append(e)
    assert len(kept) == 40
    assert len(os.listdir("/proc/self/fd")) == before


def test_public_api_names():
    assert audio.SAMPLE_RATE == 16000
    for name in ("decode_bytes", "decode_file", "from_pcm16", "check_samples", "duration"):
        assert callable(getattr(audio, name))

"""Audio input: whatever a client sends becomes 16 kHz mono float32 in [-1, 1], or a typed error.

This is the first stage of the pipeline and the one that touches untrusted bytes, so it is strict:

* Containers are decoded with PyAV (bundled FFmpeg), restricted to an allowlist of audio
  demuxers, and with an empty protocol whitelist so that nested opens (playlists, concat scripts,
  external references) all fail: a request can never make FFmpeg read another file or URL.
* Every FFmpeg/PyAV failure becomes a `guard.errors.AudioError` whose message says what was
  wrong and what is accepted. A packet that fails to decode is an error, not something skipped:
  the guard must not score audio that differs from what the client sent.
* Length is capped before the work is done: a declared duration over `max_seconds` is refused
  before decoding, and decoding stops as soon as the decoded duration passes `max_seconds`
  (decompression bombs with a missing or lying header never get decoded in full).
* Decoding is streaming (frame by frame through one `av.AudioResampler`, then flushed) and the
  chunks are concatenated once. Each call owns its container and resampler, closed by context
  managers, so the functions are safe to call from the gRPC worker threads at the same time.
"""
from __future__ import annotations

import io
import math
import numbers
import os
from typing import BinaryIO, Iterable

import av
import numpy as np

from guard.errors import AudioError, AudioTooLong

SAMPLE_RATE = 16000
MIN_PCM_RATE, MAX_PCM_RATE = 4000, 384000  # for raw PCM and for decoded streams alike
MAX_CHANNELS = 32
ACCEPTED = "WAV, FLAC, Ogg (Opus/Vorbis), MP3, AAC/M4A/MP4, WebM/Matroska, AIFF, CAF, WavPack and similar"

# FFmpeg demuxers we let probe untrusted bytes (`format_whitelist`): the audio containers clients
# send. Everything else (playlists, image sequences, subtitle and exotic game formats) is refused.
_DEMUXERS = (
    "wav", "w64", "flac", "ogg", "mp3", "aac", "loas", "mov", "matroska", "aiff", "caf", "au",
    "amr", "ac3", "eac3", "wv", "ape", "tta", "asf", "avi", "flv", "mpegts",
)
# Containers whose declared duration is read from the header (not estimated from the bit rate),
# so decoding less than declared means the file was cut short or frames were dropped as corrupt.
# Raw FLAC declares its exact sample count (STREAMINFO); the others get codec-padding slack.
_EXACT_DURATION = {"flac", "mov", "matroska", "wav", "w64", "aiff", "caf"}
_SLACK_S = 0.001  # float/millisecond rounding of header durations
_CHUNK = 1 << 16  # samples per frame fed to the resampler by from_pcm16


def decode_bytes(data: bytes, *, max_seconds: float) -> np.ndarray:
    """Decode an encoded audio file held in memory (any allowlisted container/codec)."""
    _check_limit(max_seconds)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioError(f"audio must be bytes; got {type(data).__name__}")
    if len(data) == 0:
        raise AudioError(f"empty audio: got 0 bytes; send an audio file ({ACCEPTED})")
    return _decode(io.BytesIO(data), max_seconds)


def decode_file(path: str | os.PathLike, *, max_seconds: float) -> np.ndarray:
    """Decode an audio file on disk. The path is opened by Python, never parsed as an FFmpeg URL."""
    _check_limit(max_seconds)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise AudioError(f"cannot read audio file {os.fspath(path)!r}: {e.strerror or e}") from e
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise AudioError(f"empty audio file {os.fspath(path)!r}: 0 bytes")
        return _decode(f, max_seconds)


def from_pcm16(data: bytes, sample_rate: int, *, channels: int = 1, max_seconds: float) -> np.ndarray:
    """Convert raw little-endian signed 16-bit PCM (interleaved when `channels` > 1)."""
    _check_limit(max_seconds)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioError(f"raw PCM16 must be bytes; got {type(data).__name__}")
    if not _is_int(sample_rate) or not MIN_PCM_RATE <= sample_rate <= MAX_PCM_RATE:
        raise AudioError(f"sample_rate must be an integer in [{MIN_PCM_RATE}, {MAX_PCM_RATE}] Hz; got {sample_rate!r}")
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"channels must be an integer in [1, {MAX_CHANNELS}]; got {channels!r}")
    view = memoryview(data)
    data = (view if view.c_contiguous else memoryview(view.tobytes())).cast("B")
    n = len(data)
    if n == 0:
        raise AudioError("empty audio: raw PCM16 with 0 bytes")
    if n % 2:
        raise AudioError(f"raw PCM16 needs an even number of bytes; got {n}")
    if n % (2 * channels):
        raise AudioError(f"raw PCM16 with {channels} interleaved channels needs a multiple of {2 * channels} bytes; got {n}")
    frames = n // (2 * channels)
    if frames / sample_rate > max_seconds + _SLACK_S:
        raise AudioTooLong(f"audio is {frames / sample_rate:.2f} s; the limit is {max_seconds:g} s")
    pcm = np.frombuffer(data, dtype="<i2").reshape(frames, channels)
    mono = (pcm[:, 0] if channels == 1 else pcm.mean(axis=1, dtype=np.float32)).astype(np.float32) / 32768.0
    if sample_rate == SAMPLE_RATE:
        return np.ascontiguousarray(mono, dtype=np.float32)
    try:
        return _finish(_resample_mono(mono, sample_rate))
    except av.error.FFmpegError as e:  # pragma: no cover - inputs are validated above
        raise AudioError(f"cannot resample raw PCM16 from {sample_rate} Hz: {_reason(e)}") from e


def to_pcm16(samples: np.ndarray) -> bytes:
    """float32 samples to little-endian PCM16, the exact inverse of `from_pcm16` (x * 32768,
    rounded, clipped): a 16-bit file decoded here and sent as PCM16 arrives as the same samples."""
    x = np.asarray(samples, dtype=np.float64) * 32768.0
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def check_samples(samples: np.ndarray, *, max_seconds: float) -> np.ndarray:
    """Validate samples that are already 16 kHz mono float; return them as contiguous float32.

    The input array is returned as is when it is already valid float32 contiguous data. Values a
    little over full scale are clipped to [-1, 1]; a peak over 2.0 is refused as mis-scaled
    (typically integer PCM passed as float).
    """
    _check_limit(max_seconds)
    if not isinstance(samples, np.ndarray):
        raise AudioError(f"samples must be a numpy array of floats in [-1, 1]; got {type(samples).__name__}")
    if samples.ndim != 1:
        raise AudioError(f"samples must be 1-D mono at {SAMPLE_RATE} Hz; got shape {samples.shape}")
    if samples.dtype.kind != "f":
        raise AudioError(f"samples must be float32 or float64 in [-1, 1]; got dtype {samples.dtype} "
                         "(use from_pcm16 for raw 16-bit PCM)")
    if samples.size == 0:
        raise AudioError("empty audio: 0 samples")
    if samples.size / SAMPLE_RATE > max_seconds + _SLACK_S:
        raise AudioTooLong(f"audio is {samples.size / SAMPLE_RATE:.2f} s; the limit is {max_seconds:g} s")
    _check_finite(samples)
    peak = float(np.max(np.abs(samples)))
    if peak > 2.0:
        raise AudioError(f"samples must be floats in [-1, 1]; peak is {peak:g} "
                         "(integer PCM passed as float? divide by 32768)")
    out = np.ascontiguousarray(samples, dtype=np.float32)
    return np.clip(out, -1.0, 1.0) if peak > 1.0 else out


def duration(samples: np.ndarray) -> float:
    """Seconds of 16 kHz mono audio in `samples`."""
    return len(samples) / SAMPLE_RATE


# --- internals -------------------------------------------------------------------------------


def _decode(fileobj: BinaryIO, max_seconds: float) -> np.ndarray:
    try:
        container = av.open(
            fileobj,
            mode="r",
            container_options={
                "format_whitelist": ",".join(_DEMUXERS),
                "protocol_whitelist": "none",  # no protocol exists by that name: nested opens all fail
                "err_detect": "crccheck",
            },
            metadata_errors="ignore",
        )
    except av.error.FFmpegError as e:
        raise AudioError(f"not a readable audio file ({_reason(e)}); accepted: {ACCEPTED}") from e
    except (ValueError, OSError, RuntimeError, IndexError) as e:
        raise AudioError(f"not a readable audio file ({e}); accepted: {ACCEPTED}") from e
    with container:
        return _decode_stream(container, max_seconds)


def _decode_stream(container: av.container.InputContainer, max_seconds: float) -> np.ndarray:
    if not container.streams.audio:
        found = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        raise AudioError(f"no audio stream in the file (found: {found}); accepted: {ACCEPTED}")
    stream = container.streams.audio[0]
    if stream.codec_context is None:
        raise AudioError(f"the file's audio codec has no decoder in this build; accepted: {ACCEPTED}")
    stream.codec_context.thread_count = 1  # audio decoders barely thread; we already run in a pool
    if stream.codec_context.name == "flac":  # lossless: a frame failing its CRC is an error, not audio
        stream.codec_context.options = {"err_detect": "crccheck+explode"}

    declared = _declared_seconds(container, stream)
    if declared is not None and declared > max_seconds + _SLACK_S:
        raise AudioTooLong(f"audio declares {declared:.2f} s; the limit is {max_seconds:g} s")

    resampler, decoded = _Resampler(), 0.0
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                if not MIN_PCM_RATE <= frame.sample_rate <= MAX_PCM_RATE:  # also bounds the resampler's work
                    raise AudioError(f"audio sample rate {frame.sample_rate} Hz is outside [{MIN_PCM_RATE}, {MAX_PCM_RATE}] Hz")
                if not 1 <= frame.layout.nb_channels <= MAX_CHANNELS:
                    raise AudioError(f"audio has {frame.layout.nb_channels} channels; 1 to {MAX_CHANNELS} are accepted")
                decoded += frame.samples / frame.sample_rate
                if decoded > max_seconds + _SLACK_S:
                    raise AudioTooLong(f"audio is longer than the {max_seconds:g} s limit (stopped decoding at {decoded:.2f} s)")
                resampler.push(frame)
        resampler.flush()
    except av.error.FFmpegError as e:
        raise AudioError(f"corrupt or truncated audio after {decoded:.2f} s ({_reason(e)})") from e
    except (ValueError, OSError, RuntimeError, IndexError, ZeroDivisionError) as e:
        raise AudioError(f"cannot decode audio after {decoded:.2f} s ({e})") from e

    fmt = container.format.name.split(",")[0]
    slack = 0.001 if fmt == "flac" else max(0.25, 0.01 * (declared or 0.0))
    if declared is not None and fmt in _EXACT_DURATION and declared - decoded > slack:
        raise AudioError(f"audio is truncated or corrupt: the header declares {declared:.2f} s but only {decoded:.2f} s could be decoded")
    return _finish(resampler.chunks)


class _Resampler:
    """Streams frames of any format into 16 kHz mono float32 chunks (`self.chunks`).

    A new swr resampler starts whenever the input rate/layout/format changes mid-stream. At each
    flush the input is padded with a little silence and the output trimmed to exactly
    round(input samples * 16000 / rate): swr alone drops the last filter-delay's worth of samples
    (all of them for inputs of a few ms).
    """

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int] | None = None
        self._in = self._out = 0

    def push(self, frame: av.AudioFrame) -> None:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:
            self.flush()
            # rematrix_maxval=1 makes the downmix an average (plain swr would sum at -3 dB and clip)
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE,
                                                options={"rematrix_maxval": "1.0"})
            self._key, self._in, self._out = key, 0, 0
        self._in += frame.samples
        self._take(self._resampler.resample(frame))

    def flush(self) -> None:
        if self._resampler is None:
            return
        fmt, layout, rate = self._key
        pad = _silence(fmt, layout, rate, max(256, rate // 50))
        if pad is not None:
            self._take(self._resampler.resample(pad))
        self._take(self._resampler.resample(None))
        excess = self._out - round(self._in * SAMPLE_RATE / rate)
        while excess > 0 and self.chunks:
            last = self.chunks.pop()
            if last.size > excess:
                self.chunks.append(last[: last.size - excess])
            excess -= last.size
        self._resampler, self._key = None, None

    def _take(self, frames: Iterable[av.AudioFrame]) -> None:
        for f in frames:
            a = f.to_ndarray().reshape(-1)
            self.chunks.append(a)
            self._out += a.size


def _silence(fmt: str, layout: str, rate: int, samples: int) -> av.AudioFrame | None:
    """A frame of digital silence in the given format, or None if PyAV cannot build one."""
    try:
        frame = av.AudioFrame(format=fmt, layout=layout, samples=samples)
    except (ValueError, av.error.FFmpegError):
        return None
    zero = b"\x80" if fmt.startswith("u8") else b"\x00"  # unsigned 8-bit silence is mid-scale
    for plane in frame.planes:
        plane.update(zero * plane.buffer_size)
    frame.sample_rate = rate
    return frame


def _resample_mono(mono: np.ndarray, rate: int) -> list[np.ndarray]:
    """Resample a mono float32 signal to SAMPLE_RATE, a chunk at a time."""
    resampler = _Resampler()
    for start in range(0, len(mono), _CHUNK):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None, start:start + _CHUNK]), format="flt", layout="mono")
        frame.sample_rate = rate
        resampler.push(frame)
    resampler.flush()
    return resampler.chunks


def _finish(chunks: list[np.ndarray]) -> np.ndarray:
    """Join the chunks once, then refuse empty or non-finite audio and clip to [-1, 1]."""
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise AudioError("no audio samples could be decoded (the audio stream is empty or under one 16 kHz sample)")
    _check_finite(audio)
    np.clip(audio, -1.0, 1.0, out=audio)
    return np.ascontiguousarray(audio)


def _check_finite(samples: np.ndarray) -> None:
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad))
        raise AudioError(f"audio contains {int(bad.sum())} NaN or infinite samples "
                         f"(first at {first / SAMPLE_RATE:.3f} s); samples must be finite floats in [-1, 1]")


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """Duration written in the header: the audio stream's own, else the container's (if only stream)."""
    if stream.duration and stream.duration > 0 and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0 and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _reason(e: av.error.FFmpegError) -> str:
    if isinstance(e, av.error.EOFError):
        return "ffmpeg: the data ends too early, the file looks truncated"
    return f"ffmpeg: {e.strerror or e}"


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_limit(max_seconds: float) -> None:
    """`max_seconds` comes from our config, not the client: a bad value is a programming error."""
    if not isinstance(max_seconds, numbers.Real) or isinstance(max_seconds, bool) or math.isnan(max_seconds) \
            or max_seconds <= 0:
        raise ValueError(f"max_seconds must be a positive number; got {max_seconds!r}")


if __name__ == "__main__":  # `python -m guard.audio FILE > FILE.pcm`: 16 kHz mono PCM16 of any audio file
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m guard.audio FILE > FILE.pcm   (16 kHz mono little-endian PCM16 on stdout)")
    try:
        sys.stdout.buffer.write(to_pcm16(decode_file(sys.argv[1], max_seconds=24 * 3600)))
    except (AudioError, OSError) as e:
        sys.exit(f"python -m guard.audio: {getattr(e, 'message', e)}")

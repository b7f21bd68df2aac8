"""A request's audio before decoding, and raw PCM16 that arrives in pieces.

Transports hand the pipeline an `EncodedAudio` (an audio file's bytes) or a `RawPcm` (PCM16 with
its rate and channels), each with the duration cap that applies to the caller; the pipeline
decodes it (`decode()`) and times that as its first stage. `PcmStream` is the streaming form:
pieces of any size in, 16 kHz mono float32 out.
"""
from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from guard import audio
from guard.errors import AudioError, AudioTooLong


@dataclass(frozen=True)
class EncodedAudio:
    """An audio file's bytes (any container `guard.audio` accepts)."""

    data: bytes
    max_seconds: float

    def decode(self) -> np.ndarray:
        return audio.decode_bytes(self.data, max_seconds=self.max_seconds)


@dataclass(frozen=True)
class RawPcm:
    """Raw little-endian PCM16 (interleaved when `channels` > 1)."""

    data: bytes
    sample_rate: int
    channels: int
    max_seconds: float

    def decode(self) -> np.ndarray:
        if self.sample_rate == 0:
            raise AudioError("pcm.sample_rate is required: the rate of the raw PCM16 in Hz (e.g. 16000)")
        return audio.from_pcm16(self.data, self.sample_rate, channels=self.channels or 1, max_seconds=self.max_seconds)


AudioSource = EncodedAudio | RawPcm


class PcmStream:
    """Raw PCM16 arriving in arbitrary pieces -> 16 kHz mono float32, independent of the piece sizes.

    Bytes that do not complete a frame wait for the next piece. At 16 kHz the conversion is
    `audio.from_pcm16` itself; at other rates one resampler runs across the whole stream (a
    fresh one per piece would click at every boundary).
    """

    def __init__(self, sample_rate: int, channels: int, max_seconds: float):
        self.sample_rate, self.channels, self.max_seconds = sample_rate, channels, max_seconds
        self._frame_bytes = 2 * channels
        self._rest = b""
        self._resampler: av.AudioResampler | None = None
        self.samples_in = 0  # frames received, at the input rate
        if not audio.MIN_PCM_RATE <= sample_rate <= audio.MAX_PCM_RATE:
            raise AudioError(f"config.sample_rate must be the rate of the PCM16 you stream, in "
                             f"[{audio.MIN_PCM_RATE}, {audio.MAX_PCM_RATE}] Hz; got {sample_rate}")
        if not 1 <= channels <= audio.MAX_CHANNELS:
            raise AudioError(f"config.channels must be in [1, {audio.MAX_CHANNELS}]; got {channels}")

    @property
    def seconds_in(self) -> float:
        return self.samples_in / self.sample_rate

    def push(self, data: bytes) -> np.ndarray:
        data = self._rest + data
        usable = len(data) - len(data) % self._frame_bytes
        self._rest = data[usable:]
        if not usable:
            return np.zeros(0, np.float32)
        self.samples_in += usable // self._frame_bytes
        if self.seconds_in > self.max_seconds:
            raise AudioTooLong(f"the stream sent more than the {self.max_seconds:g} s a stream may carry; "
                               "end this stream and continue in a new one")
        if self.sample_rate == audio.SAMPLE_RATE:
            return audio.from_pcm16(data[:usable], self.sample_rate, channels=self.channels, max_seconds=self.max_seconds)
        frames = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, self.channels)
        mono = (frames[:, 0] if self.channels == 1 else frames.mean(axis=1, dtype=np.float32)).astype(np.float32) / 32768.0
        return self._resample(mono)

    def flush(self) -> np.ndarray:
        if self._rest:
            raise AudioError(f"the stream ended inside a PCM16 frame: {len(self._rest)} stray byte(s); "
                             f"send whole frames of {self._frame_bytes} bytes")
        return self._resample(None) if self._resampler is not None else np.zeros(0, np.float32)

    def _resample(self, mono: np.ndarray | None) -> np.ndarray:
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=audio.SAMPLE_RATE)
        frame = None
        if mono is not None:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None, :]), format="flt", layout="mono")
            frame.sample_rate = self.sample_rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.clip(np.concatenate(out), -1, 1).astype(np.float32) if out else np.zeros(0, np.float32)

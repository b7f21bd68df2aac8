"""Small audio files made with PyAV's own encoders: test inputs and the fuzzing seed corpus.

`encode()` is used by the tests to build files on the fly; `python tests/fuzz/seeds.py` rewrites
the tiny committed seeds in tests/fixtures/audio/ (a few KB each, 0.25-0.5 s of two sines).
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import av
import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "audio"

# name -> (muxer, encoder, sample rate, layout, encoder options)
FORMATS = {
    "wav": ("wav", "pcm_s16le", 44100, "stereo", None),
    "f32.wav": ("wav", "pcm_f32le", 8000, "mono", None),
    "flac": ("flac", "flac", 16000, "mono", None),
    "opus.ogg": ("ogg", "libopus", 48000, "stereo", None),
    "vorbis.ogg": ("ogg", "vorbis", 44100, "stereo", {"strict": "experimental"}),
    "mp3": ("mp3", "libmp3lame", 44100, "stereo", None),
    "m4a": ("ipod", "aac", 44100, "stereo", None),
    "aac": ("adts", "aac", 22050, "mono", None),
    "webm": ("webm", "libopus", 48000, "mono", None),
}


def sine(rate: int, seconds: float, amp: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int, muxer: str, codec: str, layout: str = "mono",
           options: dict | None = None) -> bytes:
    """Encode float samples shaped (channels, n) in [-1, 1] with PyAV; return the file's bytes."""
    samples = np.ascontiguousarray(np.atleast_2d(samples), dtype=np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout, options=options or {})
        ctx = stream.codec_context
        resampler = av.AudioResampler(format=ctx.codec.audio_formats[0].name, layout=layout, rate=rate,
                                      frame_size=ctx.frame_size or None)
        pts = 0
        for start in range(0, samples.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 4096]),
                                               format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, pts
            pts += frame.samples
            for f in resampler.resample(frame):
                out.mux(stream.encode(f))
        for f in resampler.resample(None):
            out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    return buf.getvalue()


def can_encode(codec: str) -> bool:
    try:
        av.Codec(codec, "w")
        return True
    except Exception:
        return False


def stereo_tone(rate: int, seconds: float) -> np.ndarray:
    """Left 0.6, right 0.2 at 440 Hz: a correct downmix averages them to 0.4."""
    return np.stack([sine(rate, seconds, 0.6), sine(rate, seconds, 0.2)])


def make_fixture(name: str, seconds: float = 0.5) -> bytes:
    muxer, codec, rate, layout, options = FORMATS[name]
    x = stereo_tone(rate, seconds) if layout == "stereo" else sine(rate, seconds, 0.4)[None]
    return encode(x, rate, muxer, codec, layout, options)


def main() -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, (_, codec, *_rest) in FORMATS.items():
        if not can_encode(codec):
            print(f"skip {name}: no {codec} encoder", file=sys.stderr)
            continue
        data = make_fixture(name, 0.1 if name.endswith("wav") else 0.5)
        (FIXTURES / f"tone.{name}").write_bytes(data)
        print(f"tone.{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()

"""What the audio itself says, per 20 ms encoder frame: Silero VAD speech probability and energy.

The probe's attention is compared against this evidence: a decoder that writes text while
attending to frames without speech, or to padding, is writing from its prior.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.utils import get_assets_path
from faster_whisper.vad import SileroVADModel

SAMPLE_RATE = 16000
FRAME = 320  # samples per encoder frame (20 ms)
VAD_CHUNK = 512  # Silero's chunk (32 ms)
VAD_BATCH = 128  # chunks per Silero run (see `_Silero`)
ENERGY_FLOOR_DB = -100.0


@dataclass
class FrameEvidence:
    speech_prob: np.ndarray  # [frames] Silero probability, 0 beyond the audio
    energy_db: np.ndarray  # [frames] RMS in dBFS, floor beyond the audio
    n_frames: int  # frames holding real audio

    def speech(self, threshold: float = 0.5) -> np.ndarray:
        return self.speech_prob >= threshold


class _Silero(SileroVADModel):
    """faster-whisper's Silero v6 wrapper (same model, same outputs) on a session that keeps ONNX
    Runtime's memory arena: faster-whisper turns the arena off, and every 30 s window then
    allocates its activations afresh (~60 ms a window instead of ~36 ms on a 2-core host).

    It runs the model VAD_BATCH chunks at a time, carrying the recurrent state between runs, where
    faster-whisper feeds up to 10,000 chunks (a whole 30 s window) at once. The probabilities are
    bit for bit the same (tests/test_perf_equivalence.py); the arena's size is not: it keeps the
    largest activations alive at once, one window's per concurrent call. Measured on 30 s windows
    (benchmarks/vad_memory.py): peak RSS +27 -> +9 MB with one thread, +92 -> +42 MB with four
    windows at once, at the same speed.
    """

    def __init__(self, path: str):  # replaces SileroVADModel.__init__, which only builds the session
        import onnxruntime as ort  # as faster-whisper does: imported when a session is built

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=options)

    def __call__(self, audio: np.ndarray, num_samples: int = VAD_CHUNK, context_size_samples: int = 64) -> np.ndarray:
        """Speech probability per `num_samples` chunk of `audio` (1-D, a whole number of chunks): [chunks, 1]."""
        if audio.ndim != 1 or len(audio) % num_samples:
            raise ValueError(f"VAD input must be 1-D and a multiple of {num_samples} samples")
        chunks = np.array(audio, np.float32).reshape(-1, num_samples)
        # Each chunk is fed behind the last `context_size_samples` of the chunk before it (zeros
        # before the first). faster-whisper's wrapper also zeroes the last chunk's own tail (it
        # writes through a view of the input): done here on a copy, so the outputs match.
        chunks[-1, -context_size_samples:] = 0
        context = np.zeros((len(chunks), context_size_samples), np.float32)
        context[1:] = chunks[:-1, -context_size_samples:]
        fed = np.concatenate([context, chunks], axis=1)
        h = np.zeros((1, 1, 128), np.float32)
        c = np.zeros((1, 1, 128), np.float32)
        out = []
        for start in range(0, len(fed), VAD_BATCH):
            probs, h, c = self.session.run(None, {"input": fed[start:start + VAD_BATCH], "h": h, "c": c})
            out.append(probs)
        return np.concatenate(out, axis=0)


class VoiceActivity:
    """One Silero VAD session (thread-safe: ONNX Runtime sessions are)."""

    def __init__(self):
        self.model = _Silero(f"{get_assets_path()}/silero_vad_v6.onnx")

    def evidence(self, audio: np.ndarray, total_frames: int = 1500, enabled: bool = True) -> FrameEvidence:
        n = min(total_frames, int(np.ceil(len(audio) / FRAME)))
        energy = np.full(total_frames, ENERGY_FLOOR_DB, np.float32)
        if n:
            padded = np.zeros(n * FRAME, np.float32)
            padded[: len(audio)] = audio[: n * FRAME]
            rms = np.sqrt(np.mean(padded.reshape(n, FRAME) ** 2, axis=1) + 1e-12)
            energy[:n] = np.maximum(20 * np.log10(rms), ENERGY_FLOOR_DB)
        speech = np.zeros(total_frames, np.float32)
        if enabled and len(audio) >= VAD_CHUNK:
            clip = audio[: n * FRAME]
            pad = (-len(clip)) % VAD_CHUNK
            probs = self.model(np.pad(clip, (0, pad)).astype(np.float32)).reshape(-1)
            centers = (np.arange(n) * FRAME + FRAME // 2) // VAD_CHUNK
            speech[:n] = probs[np.minimum(centers, len(probs) - 1)]
        return FrameEvidence(speech, energy, n)

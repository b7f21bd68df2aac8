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
ENERGY_FLOOR_DB = -100.0


@dataclass
class FrameEvidence:
    speech_prob: np.ndarray  # [frames] Silero probability, 0 beyond the audio
    energy_db: np.ndarray  # [frames] RMS in dBFS, floor beyond the audio
    n_frames: int  # frames holding real audio

    def speech(self, threshold: float = 0.5) -> np.ndarray:
        return self.speech_prob >= threshold


class _Silero(SileroVADModel):
    """faster-whisper's Silero v6 wrapper (same model, same batching, same outputs) on a session
    that keeps ONNX Runtime's memory arena: faster-whisper turns the arena off, and every 30 s
    window then allocates its activations afresh (~60 ms a window instead of ~36 ms on a 2-core host)."""

    def __init__(self, path: str):  # replaces SileroVADModel.__init__, which only builds the session
        import onnxruntime as ort  # as faster-whisper does: imported when a session is built

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=options)


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

"""Transcribe window by window with faster-whisper, keeping what each window's decoder saw.

faster-whisper's own loop hides the encoder output and the prompt of every 30 s window. We run
the same loop from its building blocks (`encode`, `get_prompt`, `generate_with_fallback`,
`_split_segments_by_timestamps`) so that each window comes out with its encoder output (encoded
once, reused by the probe), its prompt and its emitted tokens.

One difference from `WhisperModel.transcribe`, on purpose: log-mel features are computed per
window over that window's 30 s of audio, not over the whole file. A window then depends only on
its own samples, so a stream fed in any chunk size gives exactly the unary transcript.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

from guard import blas
from guard.config import Settings
from guard.errors import Cancelled, OptionsError
from guard.models import ResolvedModel
from guard.results import Segment

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame (10 ms)
WINDOW_FRAMES = 3000  # mel frames in a 30 s window
WINDOW_SAMPLES = WINDOW_FRAMES * HOP
ENCODER_STRIDE = 2  # mel frames per encoder frame (20 ms)


@dataclass
class Window:
    """One decoded 30 s window: everything the probe needs to replay it."""

    index: int
    seek: int  # mel frame where the window starts (absolute)
    n_frames: int  # mel frames of real audio in it (the rest is padding)
    audio: np.ndarray  # its samples (for VAD / energy)
    encoder_output: np.ndarray  # [1500, d_model] float32, host memory
    prompt: list[int]
    tokens: list[int]  # emitted, without the end-of-text token
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    language: str
    language_prob: float = 1.0  # the model's probability that the audio is in `language` (first window; nan: not asked)
    language_margin: float = 1.0  # that probability less the most probable other language's
    segments: list[Segment] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.seek * HOP / SAMPLE_RATE

    @property
    def n_encoder_frames(self) -> int:
        return (self.n_frames + ENCODER_STRIDE - 1) // ENCODER_STRIDE


@dataclass
class DecodeState:
    """What carries from one window to the next (the previous-text prompt, the seek)."""

    seek: int = 0
    window_index: int = 0
    segment_index: int = 0
    all_tokens: list[int] = field(default_factory=list)
    prompt_reset_since: int = 0
    language: str | None = None
    language_prob: float | None = None
    language_margin: float | None = None
    language_prob_wanted: bool = True  # False: a given language is not scored (saves a detection pass)


class Transcriber:
    """A loaded faster-whisper model plus the windowed decoding loop."""

    def __init__(self, resolved: ResolvedModel, settings: Settings):
        self.name = resolved.name
        self.device = settings.resolved_device()
        self.compute_type = settings.resolved_compute_type(self.device)
        self.settings = settings
        self.whisper = WhisperModel(str(resolved.path), device=self.device, compute_type=self.compute_type,
                                    cpu_threads=settings.cpu_threads, num_workers=settings.max_concurrent)
        self.ct2 = self.whisper.model
        self.multilingual = self.ct2.is_multilingual
        self.encode_calls = 0  # windows encoded since load (the probe must add none)
        if settings.seed:
            ctranslate2.set_random_seed(settings.seed)

    def options(self, *, beam_size: int | None = None, language: str | None = None,
                temperatures: list[float] | None = None) -> TranscriptionOptions:
        s = self.settings
        if language is not None and not self.multilingual and language != "en":
            raise OptionsError(f"model {self.name} is English-only; language {language!r} is not available")
        if language is not None and self.multilingual:
            from faster_whisper.tokenizer import _LANGUAGE_CODES

            if language not in _LANGUAGE_CODES:
                raise OptionsError(f"unknown language code {language!r}; use an ISO-639-1 code such as 'en'")
        tokenizer = self.tokenizer(language or "en")
        return TranscriptionOptions(
            beam_size=beam_size or s.beam_size, best_of=5, patience=1, length_penalty=1, repetition_penalty=1,
            no_repeat_ngram_size=0, log_prob_threshold=-1.0, no_speech_threshold=0.6,
            compression_ratio_threshold=2.4, condition_on_previous_text=s.condition_on_previous_text,
            prompt_reset_on_temperature=0.5, temperatures=list(temperatures or s.temperatures), initial_prompt=None, prefix=None,
            suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]), without_timestamps=False,
            max_initial_timestamp=1.0, word_timestamps=False, prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、", multilingual=False, max_new_tokens=None,
            clip_timestamps="0", hallucination_silence_threshold=None, hotwords=None)

    def tokenizer(self, language: str | None) -> Tokenizer:
        return Tokenizer(self.whisper.hf_tokenizer, self.multilingual, task="transcribe",
                         language=(language or "en") if self.multilingual else None)

    def encode(self, window_audio: np.ndarray) -> tuple[ctranslate2.StorageView, np.ndarray, int]:
        """Log-mel of the window's own samples, padded to 30 s, through the encoder (once)."""
        with blas.default_threads():  # never under the signature's one-thread limit (guard.blas)
            features = self.whisper.feature_extractor(window_audio)
        n_frames = min(WINDOW_FRAMES, features.shape[-1] - 1)
        mel = np.zeros((features.shape[0], WINDOW_FRAMES), dtype=np.float32)
        mel[:, :n_frames] = features[:, :n_frames]
        encoded = self.whisper.encode(mel)
        self.encode_calls += 1
        return encoded, host_array(encoded), n_frames

    def decode_window(self, audio: np.ndarray, state: DecodeState, options: TranscriptionOptions,
                      language: str | None, offset: int = 0) -> Window:
        """Decode the window starting at `state.seek`; `audio[0]` is absolute sample `offset`."""
        start = state.seek * HOP - offset
        window_audio = audio[start:start + WINDOW_SAMPLES]
        encoded, encoder_output, n_frames = self.encode(window_audio)
        if state.language_prob is None:
            state.language, state.language_prob, state.language_margin = self.resolve_language(
                encoded, state.language or language, state.language_prob_wanted)
        tokenizer = self.tokenizer(state.language)
        previous = state.all_tokens[state.prompt_reset_since:]
        prompt = self.whisper.get_prompt(tokenizer, previous, without_timestamps=False)
        result, avg_logprob, temperature, compression_ratio = self.whisper.generate_with_fallback(
            encoded, prompt, tokenizer, options)
        tokens = list(result.sequences_ids[0])
        time_offset = state.seek * HOP / SAMPLE_RATE
        pieces, next_seek, _ = self.whisper._split_segments_by_timestamps(
            tokenizer=tokenizer, tokens=tokens, time_offset=time_offset, segment_size=n_frames,
            segment_duration=n_frames * HOP / SAMPLE_RATE, seek=state.seek)
        window = Window(state.window_index, state.seek, n_frames, window_audio, encoder_output, prompt, tokens,
                        float(avg_logprob), float(result.no_speech_prob), float(compression_ratio),
                        float(temperature), state.language, state.language_prob, state.language_margin)
        # Whisper's timestamps are multiples of 20 ms and can run past the audio (6.00 s on a 5.516 s
        # file): clamp them to the window's real samples, so no time ever exceeds the audio.
        audio_end = time_offset + len(window_audio) / SAMPLE_RATE
        for piece in pieces:
            text = tokenizer.decode(piece["tokens"])
            if piece["start"] == piece["end"] or not text.strip():
                continue
            state.all_tokens.extend(piece["tokens"])
            end = min(float(piece["end"]), audio_end)
            window.segments.append(Segment(
                index=state.segment_index, window=state.window_index, start=min(float(piece["start"]), end),
                end=end, text=text.strip(), tokens=list(piece["tokens"]), avg_logprob=window.avg_logprob,
                no_speech_prob=window.no_speech_prob, compression_ratio=window.compression_ratio,
                temperature=window.temperature))
            state.segment_index += 1
        if not options.condition_on_previous_text or temperature > options.prompt_reset_on_temperature:
            state.prompt_reset_since = len(state.all_tokens)
        state.seek = max(next_seek, state.seek + 1)
        state.window_index += 1
        return window

    def windows(self, audio: np.ndarray, state: DecodeState, options: TranscriptionOptions,
                language: str | None, *, final: bool, offset: int = 0,
                cancel: Callable[[], bool] | None = None) -> Iterator[Window]:
        """Every window that the samples seen so far make final (`audio[0]` is absolute sample `offset`).

        A window is final once its 30 s of samples are present, or at the end of the audio.
        """
        content_frames = (offset + len(audio)) // HOP
        while state.seek < content_frames:
            if not final and (state.seek * HOP + WINDOW_SAMPLES) > offset + len(audio):
                return
            if cancel is not None and cancel():
                raise Cancelled("the call was cancelled or its deadline passed; work stopped")
            yield self.decode_window(audio, state, options, language, offset)

    def resolve_language(self, encoded: ctranslate2.StorageView, language: str | None, wanted: bool
                         ) -> tuple[str, float, float]:
        """`detect_language`, except that a given language skips the detection pass unless `wanted`
        (its probability and margin are then nan: nothing reads them)."""
        if language is None or wanted:
            return self.detect_language(encoded, language)
        return language, float("nan"), float("nan")

    def detect_language(self, encoded: ctranslate2.StorageView, language: str | None = None
                        ) -> tuple[str, float, float]:
        """The language to decode in (`language` if given, else faster-whisper's choice: the most probable
        on this window), the model's probability for it on this window, and that probability less the
        most probable other language's. An English-only model: ("en", 1.0, 1.0).

        Both are signature features (`lang.prob`, `lang.margin`): a multilingual model that is unsure
        which language it hears tends to write fluent text in another one. The decode never reads them."""
        if not self.multilingual:
            return "en", 1.0, 1.0
        probs = [(token[2:-2], float(p)) for token, p in self.ct2.detect_language(encoded)[0]]
        chosen = language or probs[0][0]
        prob = dict(probs).get(chosen, 0.0)
        other = max((p for lang, p in probs if lang != chosen), default=0.0)
        return chosen, prob, prob - other


def host_array(view: ctranslate2.StorageView) -> np.ndarray:
    """A float32 [frames, d_model] numpy copy of an encoder output, wherever it lives."""
    if view.device != "cpu":
        view = view.to_device(ctranslate2.Device.cpu)
    if view.dtype != ctranslate2.DataType.float32:
        view = view.to(ctranslate2.DataType.float32)
    return np.array(view, dtype=np.float32, copy=True)[0]


def replace_options(options: TranscriptionOptions, **changes) -> TranscriptionOptions:
    return dataclasses.replace(options, **changes)

"""The guard, top to bottom: audio -> transcribe -> probe -> signature -> score -> policy -> result.

`Guard` holds the loaded models (the only long-lived state); each call is independent and
thread-safe. Audio comes in as samples or as a request's undecoded audio (`guard.intake`), which
the pipeline decodes as its first, timed stage ("decode"). `transcribe` guards faster-whisper's own output, `verify` scores a transcript that
another system produced, `open_stream` does what `transcribe` does as audio arrives.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
from faster_whisper.transcribe import get_compression_ratio

from guard import blas, memory
from guard import alignment, words as wording
from guard import score as scoring
from guard.acoustic import VoiceActivity
from guard.asr import HOP, SAMPLE_RATE, WINDOW_SAMPLES, DecodeState, Transcriber, Window
from guard.config import Device, Settings
from guard.errors import Cancelled, ModelError, TranscriptError, UnknownModel
from guard.geometry import encoder_features, window_context_features
from guard.intake import AudioSource, PcmStream
from guard.models import ResolvedModel, resolve
from guard.policy import Policy
from guard.policy import resolve as resolve_policy
from guard.probe.runner import Probe, ProbeCache
from guard.results import (Granularity, GuardResult, RequestOptions, ScoredSegment, Segment, TranscriptSegment,
                           Word)
from guard.signature import SegmentSlice, WindowContext, normalise, segment_features, text_features

if TYPE_CHECKING:
    from guard.verify_features import OwnDecode

log = logging.getLogger(__name__)
Cancel = Callable[[], bool] | None
FRAME_SECONDS = 0.02  # one encoder frame


def _cuda_available() -> bool:
    import ctranslate2

    try:
        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # noqa: BLE001 - a broken CUDA install counts as none
        return False


def load_phrases() -> frozenset[str]:
    """The Bag of Hallucinations phrase list (Baranski et al., ICASSP 2025; MIT), normalised."""
    text = resources.files("guard.data").joinpath("boh.csv").read_text(encoding="utf-8")
    return frozenset(row["prediction"].strip() for row in csv.DictReader(text.splitlines()) if row.get("prediction"))


@dataclass
class Bundle:
    """Everything loaded for one Whisper model."""

    name: str
    resolved: ResolvedModel
    transcriber: Transcriber
    probe: Probe
    calibration: scoring.Calibration
    alignment_heads: np.ndarray
    verify_calibration: scoring.Calibration | None = None  # Verify's own; None: the detection one
    word_calibration: scoring.Calibration | None = None  # None: words take their segment's score
    verify_word_calibration: scoring.Calibration | None = None  # a verified transcript's words; None: the above

    def words_calibration(self, verified: bool) -> scoring.Calibration | None:
        """The word calibration for transcribed words, or for the words of a verified transcript."""
        return (self.verify_word_calibration or self.word_calibration) if verified else self.word_calibration


class Guard:
    def __init__(self, settings: Settings, on_fallback: Callable[[str, str], None] | None = None,
                 *, require_calibration: bool = True):
        self.require_calibration = require_calibration
        self.device = settings.resolved_device()
        if self.device == "cuda" and not _cuda_available():
            log.warning("device=cuda but CTranslate2 sees no CUDA device; falling back to CPU (int8)")
            if on_fallback:
                on_fallback("ctranslate2", "cuda_unavailable")
            self.device = "cpu"
            half = settings.compute_type in ("float16", "int8_float16", "bfloat16", "int8_bfloat16")
            settings = settings.model_copy(update={"device": Device.cpu, "compute_type": "default" if half
                                                   else settings.compute_type})
        self.settings = settings
        # numpy's BLAS thread count is left alone on purpose: faster-whisper's log-mel goes through
        # it, and one thread instead of two changes summation order enough to flip borderline
        # transcripts (seen on tests/fixtures/nonspeech-music.flac), i.e. the guard would no longer
        # transcribe what plain faster-whisper does.
        # Window k is analysed (probe, signature, score) here while CTranslate2 decodes window k+1.
        self.analysis = ThreadPoolExecutor(max_workers=settings.max_concurrent, thread_name_prefix="guard-analysis")
        self.vad: VoiceActivity | None = None  # built while the first model's weights load (`_load`)
        self.phrases = load_phrases()
        self._on_fallback = on_fallback
        self.bundles: dict[str, Bundle] = {}
        for name in dict.fromkeys([settings.model, *settings.models]):
            bundle = self._load(name, allow_paths=settings.allow_model_paths)
            self.bundles[bundle.name] = bundle
        self.default_model = next(iter(self.bundles))
        self.model_names = list(self.bundles)

    def _load(self, name: str, *, allow_paths: bool) -> Bundle:
        t0 = time.perf_counter()
        resolved = resolve(name, cache=self.settings.model_cache, allow_paths=allow_paths)
        # CTranslate2 reads and converts its weights without holding the GIL: the larger part of a
        # start (0.2 s for tiny.en on CPU). The probe session, the VAD and the calibrations are built
        # meanwhile on this thread, and onnxruntime is first imported here.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-load") as loader:
            loading = loader.submit(Transcriber, resolved, self.settings)
            try:
                bundle = self._load_analysis(resolved, loading)
            except BaseException:
                loading.result()  # a model CTranslate2 cannot load reports that first, as it always did
                raise
        log.info("loaded %s from %s on %s/%s, probe on %s in %.1fs", resolved.name, resolved.path,
                 bundle.transcriber.device, bundle.transcriber.compute_type, bundle.probe.providers[0],
                 time.perf_counter() - t0)
        return bundle

    def _load_analysis(self, resolved: ResolvedModel, loading: Future[Transcriber]) -> Bundle:
        """Everything but CTranslate2's model, which `loading` delivers: the probe, the calibrations,
        the alignment heads (and the VAD, once per guard)."""
        probe = Probe(resolved.path / "model.bin", device=self.device, threads=self.settings.probe_threads,
                      on_fallback=self._on_fallback, cache=self.settings.model_cache, model_sha=resolved.sha256 or None)
        if self.vad is None:
            self.vad = VoiceActivity()
            # first-use costs of the analysis, paid here rather than on the first window: the BLAS
            # controller inspects the loaded libraries, numpy.unique imports numpy.ma (~15 ms each)
            blas.prepare()
            import numpy.ma  # noqa: F401
        try:
            calibration = scoring.load(resolved.name, self.settings.calibration)
            if not all(0.0 <= calibration.thresholds.get(k, -1.0) <= 1.0 for k in ("flag", "suppress")):
                raise ValueError(f"thresholds must hold flag and suppress in [0, 1]; got {calibration.thresholds}")
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # JSON, but not a calibration
            source = self.settings.calibration or f"the shipped calibration of {resolved.name}"
            raise ModelError(f"calibration {str(source)!r} is not a file written by `whisper-guard calibrate` "
                             f"({type(e).__name__}: {e}); refit it or unset WHISPER_GUARD_CALIBRATION") from None
        except ModelError:
            if self.require_calibration:
                raise
            calibration = scoring.neutral(resolved.name)
        verify_calibration = _shipped(f"verify-{resolved.name}")
        if verify_calibration is None and not self.require_calibration:
            verify_calibration = scoring.neutral(resolved.name)
        elif verify_calibration is None:
            log.warning("no verify calibration for %s: Verify uses the detection calibration", resolved.name)
        config = json.loads((resolved.path / "config.json").read_text())
        heads = np.array(config.get("alignment_heads") or [], dtype=np.int64).reshape(-1, 2)
        if not len(heads):
            heads = alignment.default_alignment_heads(probe.n_layers, probe.dims["heads"])
        word_calibration = _shipped(f"words-{resolved.name}")
        verify_word_calibration = _shipped(f"words-verify-{resolved.name}")
        transcriber = loading.result()
        return Bundle(resolved.name, resolved, transcriber, probe, calibration, heads, verify_calibration,
                      word_calibration, verify_word_calibration)

    # ------------------------------------------------------------ public calls
    def bundle(self, name: str | None) -> Bundle:
        if name is None or name == "":
            return self.bundles[self.default_model]
        if name not in self.bundles:
            raise UnknownModel(f"model {name!r} is not served here; available: {', '.join(self.model_names)}")
        return self.bundles[name]

    def policy(self, bundle: Bundle, options: RequestOptions, calibration: scoring.Calibration | None = None
               ) -> Policy:
        s = self.settings
        return resolve_policy(options.policy, options.flag_threshold, options.suppress_threshold,
                              default_mode=s.policy, config_flag=s.flag_threshold, config_suppress=s.suppress_threshold,
                              calibrated=(calibration or bundle.calibration).thresholds)

    def transcribe(self, audio: np.ndarray | AudioSource, options: RequestOptions, cancel: Cancel = None) -> GuardResult:
        samples, decoded = _decode(audio)
        session = self.open_stream(options)
        session.push(samples)
        result = session.finish(cancel, include_fed=True)
        result.timings = {**decoded, **result.timings}
        return result

    @staticmethod
    def decode(audio: np.ndarray | AudioSource) -> tuple[np.ndarray, dict[str, float]]:
        """A request's audio as samples, and the decode stage's timing ({} for samples given as such)."""
        return _decode(audio)

    def open_stream(self, options: RequestOptions) -> "StreamSession":
        """A streaming session; `session.decode(pcm_stream, bytes)` turns PCM16 pieces into samples (timed)."""
        bundle = self.bundle(options.model)
        return StreamSession(self, bundle, options, self.policy(bundle, options))

    def verify(self, audio: np.ndarray | AudioSource, transcript: list[TranscriptSegment], options: RequestOptions,
               cancel: Cancel = None) -> GuardResult:
        from guard.verify_features import align_window, logprob_features  # verify only: its normaliser costs ~40 ms a start

        audio, decoded = _decode(audio)
        bundle = self.bundle(options.model)
        calibration = bundle.verify_calibration or bundle.calibration
        policy = self.policy(bundle, options, calibration)
        bundle.transcriber.options(beam_size=options.beam_size, language=options.language)  # transcribe's checks
        timings = {**decoded, **dict.fromkeys(("transcribe", "probe", "signature", "score"), 0.0)}
        windows = plan_verify_windows(transcript, len(audio) / SAMPLE_RATE)
        scored: list[ScoredSegment] = []
        language, confidence = options.language, None
        index = 0
        last_speech = 0.0
        words_on = wants_words(options)
        for w, (start, segs, timed) in enumerate(windows):
            if cancel is not None and cancel():
                raise Cancelled("the call was cancelled or its deadline passed; work stopped")
            t0 = time.perf_counter()
            first = int(round(start * SAMPLE_RATE / HOP)) * HOP
            window_audio = audio[first:first + WINDOW_SAMPLES]
            encoder_output, n_frames, language, confidence, own = self._encode_and_decode(
                bundle, window_audio, language, confidence, options)
            tokenizer = bundle.transcriber.tokenizer(language)
            prompt = list(tokenizer.sot_sequence) + ([] if timed else [tokenizer.no_timestamps])
            aligned = align_window([seg.text for seg in segs], own.text, language)
            tokens, spans = [], []
            for seg, canon in zip(segs, aligned):
                text_tokens = tokenizer.encode(" " + canon.canonical.strip())
                if not text_tokens:
                    raise TranscriptError(f"segment {seg.text!r} has no tokens")
                lo = len(tokens)
                if timed:
                    tokens.append(tokenizer.timestamp_begin + _ts_index(seg.start - first / SAMPLE_RATE))
                tokens.extend(text_tokens)
                if timed:
                    tokens.append(tokenizer.timestamp_begin + _ts_index(seg.end - first / SAMPLE_RATE))
                spans.append((lo, len(tokens)))
            if len(prompt) + len(tokens) + 1 > bundle.probe.dims["max_positions"]:
                raise TranscriptError(f"the transcript for {start:.1f}-{start + 30:.1f} s has {len(tokens)} tokens; "
                                      f"a 30 s window holds at most {bundle.probe.dims['max_positions'] - len(prompt) - 1}")
            timings["transcribe"] += time.perf_counter() - t0
            eot_row = len(prompt) + len(tokens) - 1
            sot_row = prompt.index(tokenizer.sot) if tokenizer.sot in prompt else 0
            extra_rows = np.array([eot_row, sot_row]), np.array([tokenizer.eot, tokenizer.no_speech])
            window = Window(w, first // HOP, n_frames, window_audio, encoder_output, prompt, tokens, 0.0, 0.0, 0.0,
                            0.0, language, *confidence)
            plan = self._word_plan(bundle, window, spans) if words_on else None
            ctx, cache_lp = self._probe(bundle, window, extra_rows, timings)
            lp_emitted = ctx.token_logprob[len(prompt) - 1:len(prompt) - 1 + len(tokens)]
            window.avg_logprob = float((np.sum(lp_emitted) + cache_lp[0]) / (len(tokens) + 1))
            window.no_speech_prob = float(np.exp(cache_lp[1]))
            window.compression_ratio = float(get_compression_ratio(tokenizer.decode(tokens).strip()))
            for seg, (lo, hi) in zip(segs, spans):
                audio_end = (first + len(window_audio)) / SAMPLE_RATE  # times never run past the audio
                s_end = min(seg.end, audio_end) if timed else audio_end
                s_start = min(seg.start, s_end) if timed else first / SAMPLE_RATE
                window.segments.append(Segment(index, w, float(s_start), float(s_end), seg.text.strip(),
                                               tokens[lo:hi], window.avg_logprob, window.no_speech_prob,
                                               window.compression_ratio))
                index += 1
            rows = self._segment_features(bundle, window, ctx, spans, timings, [a.canonical for a in aligned],
                                          geometry=options.return_features or calibration.uses("encoder.output."))
            for feats, canon in zip(rows, aligned):
                feats.update(canon.features)
                feats.update(logprob_features(feats["tok.logprob_mean"], window.avg_logprob, own))
            window_scored = self._score(calibration, window, rows, policy, options.return_features or plan is not None,
                                        timings)
            if plan is not None:
                limits = self._words(bundle, window, ctx, plan, window_scored, policy, options.return_features, timings,
                                     verified=True)
                last_speech = clamp_words(window_scored, limits, last_speech)
                if not options.return_features:
                    for s in window_scored:
                        s.features = None
            scored += window_scored
        return GuardResult(scored, bundle.name, language or "en", len(audio) / SAMPLE_RATE, policy.mode, timings,
                           options.granularity)

    def _encode_and_decode(self, bundle: Bundle, window_audio: np.ndarray, language: str | None,
                           confidence: tuple[float, float] | None, options: RequestOptions
                           ) -> tuple[np.ndarray, int, str, tuple[float, float], OwnDecode]:
        """Encode a verify window once and decode it (greedy unless the request sets a beam; no previous text).
        The language and its probability come from the first window (as in transcribe) unless already known."""
        encoded, encoder_output, n_frames = bundle.transcriber.encode(window_audio)
        if confidence is None:  # (lang.prob, lang.margin) of the first window
            language, prob, margin = bundle.transcriber.resolve_language(
                encoded, language, wants_language_prob(bundle.verify_calibration or bundle.calibration, options))
            confidence = (prob, margin)
        tokenizer = bundle.transcriber.tokenizer(language)
        asr_options = bundle.transcriber.options(beam_size=options.beam_size or 1, language=language)  # greedy: cheap
        prompt = bundle.transcriber.whisper.get_prompt(tokenizer, [], without_timestamps=False)
        result, avg_logprob, _, _ = bundle.transcriber.whisper.generate_with_fallback(encoded, prompt, tokenizer,
                                                                                     asr_options)
        from guard.verify_features import OwnDecode

        own = OwnDecode(tokenizer.decode(list(result.sequences_ids[0])).strip(), float(avg_logprob),
                        float(result.no_speech_prob))
        return encoder_output, n_frames, language, confidence, own

    # ------------------------------------------------------------ shared stages
    def _probe(self, bundle: Bundle, window: Window, extra_rows: tuple[np.ndarray, np.ndarray] | None,
               timings: dict[str, float], read_rows: np.ndarray | None = None) -> tuple[WindowContext, np.ndarray]:
        """One teacher-forced pass over prompt + emitted tokens; per-position token statistics.

        Attention patterns and sublayer outputs are kept only for `read_rows` (the segments' text
        rows) and the scored rows: the previous-text prompt is fed but never read."""
        t0 = time.perf_counter()
        seq = window.prompt + window.tokens
        if read_rows is not None and extra_rows is None:
            # the vocabulary projection (the probe's costliest matmul) only where the signature reads
            rows = np.unique(read_rows)
            targets = np.asarray(seq, dtype=np.int64)[rows + 1]
        else:
            rows = np.arange(len(window.prompt) - 1, len(seq) - 1)
            targets = np.asarray(window.tokens, dtype=np.int64)
        n_main = len(rows)
        if extra_rows is not None:
            rows = np.concatenate([rows, extra_rows[0]])
            targets = np.concatenate([targets, extra_rows[1]])
        seq = seq[:int(rows.max()) + 1] if len(rows) else seq[:1]  # the last token is only ever a target
        cache: ProbeCache = bundle.probe.run(seq, window.encoder_output, rows, targets,
                                             pattern_rows=None if read_rows is None else np.unique(read_rows))
        timings["probe"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        lp = np.full(len(seq), np.nan)
        ent = np.full(len(seq), np.nan)
        ok = np.zeros(len(seq), dtype=bool)
        main_rows = rows[:n_main]
        lp[main_rows] = cache["logits.target_logprob"][:n_main]
        ent[main_rows] = cache["logits.entropy"][:n_main]
        ok[main_rows] = cache["logits.argmax"][:n_main] == targets[:n_main]
        evidence = self.vad.evidence(window.audio, enabled=self.settings.vad)
        ctx = WindowContext(cache, evidence, bundle.alignment_heads, lp, ent, ok, window.encoder_output)
        timings["signature"] += time.perf_counter() - t0
        return ctx, cache["logits.target_logprob"][n_main:]

    @staticmethod
    def _text_rows(bundle: Bundle, window: Window, spans: list[tuple[int, int]]) -> list[np.ndarray]:
        """Per segment, the input positions that predict its text tokens (timestamps left out)."""
        eot = bundle.transcriber.tokenizer(window.language).eot
        tokens = np.asarray(window.tokens)
        out = []
        for lo, hi in spans:
            positions = np.arange(lo, hi)
            text_pos = positions[tokens[lo:hi] < eot]
            out.append(len(window.prompt) - 1 + (text_pos if len(text_pos) else positions))
        return out

    def _segment_features(self, bundle: Bundle, window: Window, ctx: WindowContext, spans: list[tuple[int, int]],
                          timings: dict[str, float], texts: list[str] | None = None, *,
                          geometry: bool = False) -> list[dict[str, float]]:
        """The signature of each segment of a window (`texts`: what was teacher-forced, if not seg.text).

        `geometry`: add the encoder-output geometry, which costs a few % of the probe (only when the
        score uses it or features are asked for)."""
        t0 = time.perf_counter()
        rows_features, attention = [], []
        for i, (seg, rows) in enumerate(zip(window.segments, self._text_rows(bundle, window, spans))):
            frame_lo = int(np.clip((seg.start - window.start) / FRAME_SECONDS, 0, ctx.evidence.n_frames))
            frame_hi = int(np.clip((seg.end - window.start) / FRAME_SECONDS, frame_lo, ctx.evidence.n_frames))
            sl = SegmentSlice(rows, frame_lo, frame_hi, i, len(window.segments))
            feats = text_features(seg.text if texts is None else texts[i], seg.start, seg.end, seg.avg_logprob,
                                  seg.no_speech_prob, seg.compression_ratio, seg.temperature, self.phrases)
            if np.isfinite(window.language_prob):  # nan: a given language the score does not read
                feats["lang.prob"] = float(window.language_prob)
                feats["lang.margin"] = float(window.language_margin)
            with blas.single_threaded():  # see guard.blas
                feats.update(segment_features(ctx, sl))
                if geometry:
                    feats.update(encoder_features(ctx.encoder_output, frame_lo, frame_hi, ctx.evidence.n_frames))
            rows_features.append(feats)
            attention.append(sl.alignment)
        for feats, extra in zip(rows_features, window_context_features(
                attention, [normalise(seg.text if texts is None else texts[i]).split()
                            for i, seg in enumerate(window.segments)])):
            feats.update(extra)
        timings["signature"] += time.perf_counter() - t0
        return rows_features

    def _score_segments(self, bundle: Bundle, window: Window, ctx: WindowContext, spans: list[tuple[int, int]],
                        policy: Policy, return_features: bool, timings: dict[str, float], *,
                        keep_features: bool = False) -> list[ScoredSegment]:
        """Signature and detection score of a window's own (transcribed) segments. `keep_features`:
        keep each segment's features on it without the request asking for them (the word stage
        reads them), and without the encoder geometry that only `return_features` pays for."""
        rows_features = self._segment_features(
            bundle, window, ctx, spans, timings,
            geometry=return_features or bundle.calibration.uses("encoder.output."))
        return self._score(bundle.calibration, window, rows_features, policy, return_features or keep_features,
                           timings)

    @staticmethod
    def _score(calibration: scoring.Calibration, window: Window, rows_features: list[dict[str, float]],
               policy: Policy, return_features: bool, timings: dict[str, float]) -> list[ScoredSegment]:
        t0 = time.perf_counter()
        out = []
        if rows_features:
            scores = calibration.score(rows_features)
            for seg, feats, s in zip(window.segments, rows_features, scores):
                out.append(ScoredSegment(seg, float(s), policy.decide(float(s)), calibration.reasons(feats),
                                         feats if return_features else None))
        timings["score"] += time.perf_counter() - t0
        return out

    def analyse_window(self, bundle: Bundle, window: Window, policy: Policy, return_features: bool,
                       timings: dict[str, float], words: bool = False
                       ) -> tuple[list[ScoredSegment], tuple[float, float] | None]:
        """Probe, signature and score of one window's segments; with `words`, their words too
        (timed, scored; faster-whisper's pause clamps still to apply: see `clamp_words`)."""
        spans = locate(window)
        rows = self._text_rows(bundle, window, spans)
        read = np.concatenate(rows) if rows else None
        plan = self._word_plan(bundle, window, spans) if words else None
        extra = None
        if plan is not None:
            n_fed = len(window.prompt) + len(window.tokens)
            if n_fed <= bundle.probe.dims["max_positions"]:  # feed the last token too: its row is read
                eot = bundle.transcriber.tokenizer(window.language).eot
                extra = (np.array([n_fed - 1]), np.array([eot]))
            else:
                n_fed -= 1
            read = np.union1d(read, np.minimum(plan.std_rows, n_fed - 1))
        ctx, _ = self._probe(bundle, window, extra, timings, read_rows=read)
        scored = self._score_segments(bundle, window, ctx, spans, policy, return_features, timings,
                                      keep_features=plan is not None)
        limits = None
        if plan is not None:
            limits = self._words(bundle, window, ctx, plan, scored, policy, return_features, timings)
            if not return_features:
                for s in scored:
                    s.features = None
        del ctx  # the window's probe outputs: freed, then handed back to the OS (guard.memory)
        if self.settings.release_memory:
            memory.release()
        return scored, limits

    # ------------------------------------------------------------ words
    @staticmethod
    def _word_plan(bundle: Bundle, window: Window, spans: list[tuple[int, int]]) -> wording.Plan | None:
        tokenizer = bundle.transcriber.tokenizer(window.language)
        return wording.plan(window.prompt, window.tokens, spans, list(tokenizer.sot_sequence), tokenizer.eot)

    def word_policy(self, bundle: Bundle, policy: Policy, verified: bool = False) -> Policy:
        """The request's mode with the word calibration's thresholds (the segment's without one)."""
        calibration = bundle.words_calibration(verified)
        if calibration is None:
            return policy
        t = calibration.thresholds
        return Policy(policy.mode, t["flag"], t["suppress"])

    def _words(self, bundle: Bundle, window: Window, ctx: WindowContext, plan: wording.Plan,
               scored: list[ScoredSegment], policy: Policy, return_features: bool,
               timings: dict[str, float], verified: bool = False) -> tuple[float, float]:
        """Time, feature and score the words of a window's segments (set on `scored` in place);
        `verified`: the segments are a transcript being verified (its own word calibration)."""
        t0 = time.perf_counter()
        tokenizer = bundle.transcriber.tokenizer(window.language)
        aligned = wording.align_window(ctx, plan, tokenizer, window.n_frames, window.start,
                                       ctx.cache.n_positions or len(window.prompt) + len(window.tokens))
        feats = wording.word_features(ctx, plan, aligned, [s.score for s in scored], [s.features for s in scored])
        timings["signature"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        word_policy = self.word_policy(bundle, policy, verified)
        calibration = bundle.words_calibration(verified)
        for seg, timed, rows in zip(scored, aligned.per_segment, feats):
            if calibration is not None and rows:
                scores = calibration.score(rows)
            else:
                scores = np.full(len(rows), seg.score)
            seg.words = [Word(t.word, t.start, t.end, t.probability, float(sc), word_policy.decide(float(sc)),
                              f if return_features else None) for t, sc, f in zip(timed, scores, rows)]
        timings["score"] += time.perf_counter() - t0
        return aligned.words.median, aligned.words.longest


class StreamSession:
    """Guarded transcription of audio that arrives in pieces; a window is decoded once it is final."""

    def __init__(self, guard: Guard, bundle: Bundle, options: RequestOptions, policy: Policy):
        self.guard, self.bundle, self.policy, self.options = guard, bundle, policy, options
        self.asr_options = bundle.transcriber.options(
            beam_size=options.beam_size, language=options.language,
            temperatures=[options.temperature] if options.temperature else None)
        self.state = DecodeState(language_prob_wanted=wants_language_prob(bundle.calibration, options))
        if options.prompt and options.prompt.strip():  # as faster-whisper's initial_prompt: previous text
            self.state.all_tokens.extend(bundle.transcriber.tokenizer(options.language).encode(" " + options.prompt.strip()))
        self.chunks: list[np.ndarray] = []
        self.buffered = 0  # samples in chunks
        self.offset = 0  # absolute index of the first buffered sample
        self.timings = dict.fromkeys(("transcribe", "probe", "signature", "score"), 0.0)
        self.emitted: list[ScoredSegment] = []
        self.words = wants_words(options)
        self.last_speech = 0.0  # faster-whisper's last_speech_timestamp, carried across windows

    @property
    def total_samples(self) -> int:
        return self.offset + self.buffered

    def decode(self, pcm: PcmStream, pcm16: bytes, final: bool = False) -> np.ndarray:
        """PCM16 bytes (any piece size) -> 16 kHz mono samples through `pcm`; `final` flushes. Timed
        as the session's first stage, "decode"."""
        if "decode" not in self.timings:
            self.timings = {"decode": 0.0, **self.timings}
        t0 = time.perf_counter()
        try:
            samples = pcm.push(pcm16)
            if final:
                samples = np.concatenate([samples, pcm.flush()])
            return samples
        finally:
            self.timings["decode"] += time.perf_counter() - t0

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self.chunks.append(np.asarray(samples, dtype=np.float32))
            self.buffered += len(samples)

    def feed(self, samples: np.ndarray, cancel: Cancel = None) -> list[ScoredSegment]:
        self.push(samples)
        if self.total_samples < self.state.seek * HOP + WINDOW_SAMPLES:
            return []
        return self._run(final=False, cancel=cancel)

    def finish(self, cancel: Cancel = None, include_fed: bool = False) -> GuardResult:
        segments = self._run(final=True, cancel=cancel)
        if include_fed:
            segments = self.emitted
        return GuardResult(segments, self.bundle.name, self.state.language or self.options.language or "en",
                           self.total_samples / SAMPLE_RATE, self.policy.mode, dict(self.timings),
                           self.options.granularity)

    def _run(self, *, final: bool, cancel: Cancel) -> list[ScoredSegment]:
        audio = np.concatenate(self.chunks) if len(self.chunks) > 1 else \
            (self.chunks[0] if self.chunks else np.zeros(0, np.float32))
        pending: list[tuple[Future, dict[str, float]]] = []
        t0 = time.perf_counter()
        try:
            for window in self.bundle.transcriber.windows(audio, self.state, self.asr_options, self.options.language,
                                                          final=final, offset=self.offset, cancel=cancel):
                self.timings["transcribe"] += time.perf_counter() - t0
                timings = dict.fromkeys(self.timings, 0.0)
                pending.append((self.guard.analysis.submit(self.guard.analyse_window, self.bundle, window,
                                                           self.policy, self.options.return_features, timings,
                                                           self.words),
                                timings))
                t0 = time.perf_counter()
            self.timings["transcribe"] += time.perf_counter() - t0
            out = []
            for future, _ in pending:
                scored, limits = future.result()
                if limits is not None:
                    self.last_speech = clamp_words(scored, limits, self.last_speech)
                out += scored
        finally:
            for future, _ in pending:
                future.cancel()
        for _, timings in pending:
            for stage, seconds in timings.items():
                if stage not in ("decode", "transcribe"):
                    self.timings[stage] += seconds
        drop = max(0, min(len(audio), self.state.seek * HOP - self.offset))
        audio = audio[drop:]
        self.offset += drop
        self.chunks, self.buffered = ([audio] if len(audio) else []), len(audio)
        self.emitted += out
        return out


def _decode(audio: np.ndarray | AudioSource) -> tuple[np.ndarray, dict[str, float]]:
    """Samples as given, or a request's audio decoded: (samples, {"decode": seconds} or {})."""
    if isinstance(audio, np.ndarray):
        return audio, {}
    t0 = time.perf_counter()
    samples = audio.decode()
    return samples, {"decode": time.perf_counter() - t0}


def _shipped(name: str) -> scoring.Calibration | None:
    """A calibration the package ships, or None where it ships none for this model."""
    try:
        return scoring.load(name)
    except ModelError:
        return None


def wants_language_prob(calibration: scoring.Calibration | None, options: RequestOptions) -> bool:
    """Whether a request that gives its language still pays the detection pass for `lang.prob` and
    `lang.margin` (about 2% of a 36 s base transcription on CPU): only when the score reads them or
    features are returned."""
    return bool(options.return_features or (calibration is not None and calibration.uses("lang.")))


def wants_words(options: RequestOptions) -> bool:
    return options.word_timestamps or options.granularity is Granularity.word


def clamp_words(scored: list[ScoredSegment], limits: tuple[float, float], last_speech: float) -> float:
    """faster-whisper's pause and segment-boundary clamps on a window's words, in segment order."""
    for seg in scored:
        if seg.words:
            last_speech = alignment.clamp_segment(seg.words, seg.segment.start, seg.segment.end, *limits, last_speech)
    return last_speech


def locate(window: Window) -> list[tuple[int, int]]:
    """Token index range of each segment inside the window's emitted tokens (segments are slices)."""
    spans, pos = [], 0
    for seg in window.segments:
        n = len(seg.tokens)
        start = pos
        while start + n <= len(window.tokens) and window.tokens[start:start + n] != seg.tokens:
            start += 1
        if start + n > len(window.tokens):  # cannot happen for faster-whisper's own split
            raise RuntimeError(f"segment tokens not found in window {window.index}")
        spans.append((start, start + n))
        pos = start + n
    return spans


def _ts_index(seconds: float) -> int:
    return int(np.clip(round(seconds / FRAME_SECONDS), 0, 1500))


def plan_verify_windows(transcript: list[TranscriptSegment], duration: float
                        ) -> list[tuple[float, list[TranscriptSegment], bool]]:
    """Group a transcript into 30 s windows: (window start, its segments, timestamped?)."""
    if not transcript:
        raise TranscriptError("the transcript has no segments")
    for i, seg in enumerate(transcript):
        if not seg.text.strip():
            raise TranscriptError(f"segment {i} has empty text")
        if (seg.start is None) != (seg.end is None):
            raise TranscriptError(f"segment {i}: give both start and end, or neither")
        if seg.start is not None and not (seg.end > seg.start):
            raise TranscriptError(f"segment {i}: end ({seg.end}) must be after start ({seg.start})")
        if seg.end is not None and seg.end > duration + 1.0:
            raise TranscriptError(f"segment {i} ends at {seg.end:.2f} s, after the audio ({duration:.2f} s)")
    timed = [s.start is not None for s in transcript]
    if not any(timed):
        if duration > 30.0:
            raise TranscriptError("segments without start/end can only be verified for audio up to 30 s; "
                                  f"this audio is {duration:.1f} s: give each segment its times")
        return [(0.0, list(transcript), False)]
    if not all(timed):
        raise TranscriptError("give start/end for every segment, or for none")
    ordered = sorted(transcript, key=lambda s: s.start)
    windows, current, w_start = [], [], ordered[0].start
    for seg in ordered:
        if current and seg.end > w_start + 30.0:
            windows.append((w_start, current, True))
            current, w_start = [], seg.start
        if seg.end - seg.start > 30.0:
            raise TranscriptError(f"segment at {seg.start:.2f} s is longer than 30 s; split it")
        current.append(seg)
    windows.append((w_start, current, True))
    return windows

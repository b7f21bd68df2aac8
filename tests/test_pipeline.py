"""The guard end to end on real audio with the real tiny.en model (in-process)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import LONG, MUSIC, SPEECH, SPEECH_TEXT, is_speech_text
from pydantic import ValidationError

from guard.config import PolicyMode
from guard.errors import Cancelled, OptionsError, TranscriptError, UnknownModel
from guard.labels import words
from guard.results import RequestOptions, TranscriptSegment, Verdict


def test_real_speech_is_transcribed_and_passes(guard, load_audio):
    result = guard.transcribe(load_audio(SPEECH), RequestOptions(policy=PolicyMode.flag))
    assert is_speech_text(result.text)
    assert all(s.verdict is Verdict.pass_ for s in result.segments)
    assert all(0.0 <= s.score < guard.bundle(None).calibration.thresholds["flag"] for s in result.segments)
    assert set(result.timings) >= {"transcribe", "probe", "signature", "score"}
    assert result.audio_seconds == pytest.approx(5.516, abs=0.01)


def test_hallucination_over_music_is_flagged_or_suppressed_per_policy(guard, load_audio):
    audio = load_audio(MUSIC)
    flagged = guard.transcribe(audio, RequestOptions(policy=PolicyMode.flag))
    assert flagged.segments, "tiny.en writes text over this music clip (that is the hallucination under test)"
    assert all(s.verdict is Verdict.flag for s in flagged.segments)
    suppressed = guard.transcribe(audio, RequestOptions(policy=PolicyMode.suppress))
    assert all(s.verdict is Verdict.suppress for s in suppressed.segments)
    assert suppressed.text == ""  # removed from the text...
    assert suppressed.segments[0].segment.text.strip()  # ...but still returned, marked, never lost
    annotated = guard.transcribe(audio, RequestOptions(policy=PolicyMode.annotate))
    assert all(s.verdict is Verdict.pass_ for s in annotated.segments)
    assert [s.score for s in annotated.segments] == [s.score for s in flagged.segments]  # deterministic
    assert flagged.segments[0].reasons and flagged.segments[0].reasons[0].contribution > 0


def test_thresholds_per_request_override_the_calibrated_default(guard, load_audio):
    audio = load_audio(SPEECH)
    strict = guard.transcribe(audio, RequestOptions(policy=PolicyMode.flag, flag_threshold=0.0))
    assert all(s.verdict is Verdict.flag for s in strict.segments)


@pytest.mark.parametrize("chunk_seconds", [0.02, 0.7, 10.0])
def test_streaming_gives_the_unary_transcript_for_any_chunk_size(guard, load_audio, chunk_seconds):
    audio = load_audio(LONG)
    unary = guard.transcribe(audio, RequestOptions())
    session = guard.open_stream(RequestOptions())
    step = int(chunk_seconds * 16000)
    streamed, arrived_early = [], 0
    for i in range(0, len(audio), step):
        got = session.feed(audio[i:i + step])
        streamed += got
        arrived_early += len(got)
    final = session.finish()
    streamed += final.segments
    assert arrived_early > 0, "the first window's segments arrive before the stream ends"
    assert [(s.segment.start, s.segment.end, s.segment.text) for s in streamed] == \
        [(s.segment.start, s.segment.end, s.segment.text) for s in unary.segments]
    np.testing.assert_allclose([s.score for s in streamed], [s.score for s in unary.segments], atol=1e-6)
    assert final.audio_seconds == pytest.approx(unary.audio_seconds)


def test_verify_scores_the_true_transcript_low_and_an_invented_one_high(guard, load_audio):
    audio = load_audio(SPEECH)
    true = guard.verify(audio, [TranscriptSegment(text=SPEECH_TEXT)], RequestOptions())
    fake = guard.verify(audio, [TranscriptSegment(text="Thank you for watching, please subscribe to my channel.")],
                        RequestOptions())
    assert true.segments[0].score < fake.segments[0].score
    assert true.segments[0].verdict is Verdict.pass_
    assert fake.segments[0].verdict is not Verdict.pass_
    assert true.segments[0].segment.avg_logprob > fake.segments[0].segment.avg_logprob


def test_verify_with_timestamps_places_each_segment(guard, load_audio):
    audio = load_audio(LONG)
    segs = [TranscriptSegment(text="After the tone, say your temporary message, and then press the pound key.",
                              start=0.0, end=5.0),
            TranscriptSegment(text="Agent login.", start=5.3, end=6.6),
            TranscriptSegment(text="I'll see you next time, bye bye.", start=20.0, end=24.0)]
    result = guard.verify(audio, segs, RequestOptions(return_features=True))
    assert [s.segment.text.strip() for s in result.segments] == [s.text for s in segs]
    assert result.segments[2].score > max(result.segments[0].score, result.segments[1].score)
    assert result.segments[0].features["vad.segment_share"] > result.segments[2].features["vad.segment_share"]


@pytest.mark.parametrize("transcript, message", [
    ([], "no segments"),
    ([TranscriptSegment(text="   ")], "empty text"),
    ([TranscriptSegment(text="hi", start=1.0)], "both start and end"),
    ([TranscriptSegment(text="hi", start=2.0, end=1.0)], "must be after start"),
    ([TranscriptSegment(text="hi", start=1.0, end=99.0)], "after the audio"),
    ([TranscriptSegment(text="hi", start=1.0, end=2.0), TranscriptSegment(text="yo")], "every segment, or for none"),
])
def test_verify_rejects_transcripts_it_cannot_place(guard, load_audio, transcript, message):
    with pytest.raises(TranscriptError, match=message):
        guard.verify(load_audio(SPEECH), transcript, RequestOptions())


def test_verify_without_times_needs_short_audio(guard, load_audio):
    with pytest.raises(TranscriptError, match="up to 30 s"):
        guard.verify(load_audio(LONG), [TranscriptSegment(text="hello")], RequestOptions())


def test_bad_options_are_typed_errors(guard, load_audio):
    audio = load_audio(SPEECH)
    with pytest.raises(UnknownModel, match="not served here; available: tiny.en"):
        guard.transcribe(audio, RequestOptions(model="large-v3"))
    with pytest.raises(OptionsError, match="English-only"):
        guard.transcribe(audio, RequestOptions(language="fr"))
    for language in ("fr", "EN"):  # verify checks the language as transcribe does (it used to accept any)
        with pytest.raises(OptionsError, match="English-only"):
            guard.verify(audio, [TranscriptSegment(text="hello there")], RequestOptions(language=language))
    with pytest.raises(ValidationError):
        RequestOptions(flag_threshold=1.5)
    with pytest.raises(ValidationError):
        RequestOptions(beam_size=0)


def test_cancel_stops_work_between_windows(guard, load_audio):
    with pytest.raises(Cancelled):
        guard.transcribe(load_audio(LONG), RequestOptions(), cancel=lambda: True)


def test_cuda_requested_without_a_gpu_falls_back_to_cpu_with_a_metric_hook(tmp_path):
    """Runs the real fallback path on this GPU-less machine (skipped where a GPU exists)."""
    import ctranslate2
    import onnxruntime as ort

    from guard.config import Settings
    from guard.models import resolve
    from guard.pipeline import Guard
    from guard.probe.runner import Probe

    if ctranslate2.get_cuda_device_count() > 0 or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU is present: the fallback does not happen here")
    events = []
    g = Guard(Settings(model="tiny.en", device="cuda", compute_type="float16"),
              on_fallback=lambda c, r: events.append((c, r)))
    assert g.device == "cpu" and g.bundle(None).transcriber.compute_type == "int8"
    assert events == [("ctranslate2", "cuda_unavailable")]
    events.clear()
    probe = Probe(resolve("tiny.en", cache=tmp_path).path / "model.bin", device="cuda",
                  on_fallback=lambda c, r: events.append((c, r)))
    assert probe.providers == ["CPUExecutionProvider"]
    assert events == [("onnxruntime", "cuda_unavailable")]


@pytest.mark.parametrize("clip", [SPEECH, MUSIC])
def test_guard_transcribes_exactly_what_plain_faster_whisper_does(guard, load_audio, clip):
    """Same model object, same settings, one 30 s window: identical segments and confidence
    (the guard's times are faster-whisper's clamped to the audio, its text without the leading space)."""
    audio = load_audio(clip)
    whisper = guard.bundle(None).transcriber.whisper
    plain, _ = whisper.transcribe(audio, beam_size=5, temperature=[0.0], no_speech_threshold=None,
                                  condition_on_previous_text=True)
    plain = list(plain)
    ours = guard.transcribe(audio, RequestOptions()).segments
    end = len(audio) / 16000
    assert [(min(p.start, end), min(p.end, end), p.text.strip()) for p in plain] == \
        [(s.segment.start, s.segment.end, s.segment.text) for s in ours]
    np.testing.assert_allclose([p.avg_logprob for p in plain], [s.segment.avg_logprob for s in ours], atol=1e-6)

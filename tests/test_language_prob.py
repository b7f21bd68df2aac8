"""`lang.prob` / `lang.margin`: the model's probability for the language it decodes in, from the first window,
and its lead over the next language (the signature features of a multilingual model unsure what it hears). Real base model, real fixtures: the
probability is faster-whisper's own `info.language_probability`, detection runs once a stream, a given
language gets its own probability, and the decode never changes. English-only models: 1.0."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import LONG, SPEECH


@pytest.fixture(scope="module")
def base():
    from guard.asr import Transcriber
    from guard.config import Settings
    from guard.models import resolve

    settings = Settings(model="base")
    return Transcriber(resolve("base", cache=settings.model_cache), settings)


@pytest.fixture()
def detections(base, monkeypatch):
    """Every CTranslate2 language detection `base` runs during a test: (calls, the real method)."""
    calls = []
    real = base.ct2.detect_language

    class Spy:  # ctranslate2's Whisper object is read-only; wrap it
        def __getattr__(self, name):
            return getattr(real.__self__, name)

        def detect_language(self, encoded):
            calls.append(1)
            return real(encoded)

    monkeypatch.setattr(base, "ct2", Spy())
    return calls, real


def _windows(t, audio, language=None):
    from guard.asr import DecodeState

    state = DecodeState()
    return state, list(t.windows(audio, state, t.options(language=language), language, final=True))


def test_auto_detected_language_and_its_probability_are_faster_whispers(base, load_audio):
    audio = load_audio(LONG)
    segments, info = base.whisper.transcribe(audio, beam_size=5, temperature=0.0)
    list(segments)
    state, windows = _windows(base, audio)
    assert len(windows) >= 2
    assert state.language == info.language == "en"
    assert all(w.language == "en" for w in windows)
    assert state.language_prob == pytest.approx(info.language_probability, abs=2e-3)
    assert all(w.language_prob == state.language_prob for w in windows)  # the first window's, carried


def test_detection_runs_once_a_stream_and_a_given_language_gets_its_own_probability(base, load_audio, detections):
    audio = load_audio(LONG)
    calls, real = detections
    _, auto = _windows(base, audio)
    assert len(calls) == 1 and len(auto) >= 2
    calls.clear()
    _, given = _windows(base, audio, "es")
    assert len(calls) == 1
    assert all(w.language == "es" for w in given)
    p_es = given[0].language_prob
    assert 0.0 <= p_es < 0.2 < auto[0].language_prob  # English speech: Spanish is unlikely
    probs = dict(real(base.encode(audio[: 30 * 16000])[0])[0])
    assert p_es == pytest.approx(probs["<|es|>"], abs=1e-6)
    ranked = sorted(probs.values(), reverse=True)
    assert given[0].language_margin == pytest.approx(p_es - ranked[0], abs=1e-6)  # English is more probable
    assert given[0].language_margin < 0
    assert auto[0].language_margin == pytest.approx(ranked[0] - ranked[1], abs=1e-6)
    assert auto[0].language_margin > 0


def test_the_probability_never_changes_the_decode(base, load_audio):
    audio = load_audio(SPEECH)
    _, with_en = _windows(base, audio, "en")
    _, auto = _windows(base, audio)
    assert [s.text for w in auto for s in w.segments] == [s.text for w in with_en for s in w.segments]
    assert [w.tokens for w in auto] == [w.tokens for w in with_en]


def test_english_only_model_reports_one_and_the_signature_carries_it(guard, load_audio):
    from guard.results import RequestOptions

    result = guard.transcribe(load_audio(SPEECH), RequestOptions(return_features=True))
    assert result.segments
    assert all(s.features["lang.prob"] == 1.0 and s.features["lang.margin"] == 1.0 for s in result.segments)
    assert np.isfinite([s.features["lang.prob"] for s in result.segments]).all()


def test_a_given_language_skips_the_detection_pass_unless_the_score_or_the_caller_reads_it(base, load_audio,
                                                                                           detections, monkeypatch):
    from guard.asr import DecodeState
    from guard.pipeline import _shipped, wants_language_prob
    from guard.results import RequestOptions

    calls, _ = detections
    audio = load_audio(SPEECH)
    state = DecodeState(language_prob_wanted=False)
    windows = list(base.windows(audio, state, base.options(language="en"), "en", final=True))
    assert calls == [] and np.isnan(windows[0].language_prob) and state.language == "en"
    state = DecodeState(language_prob_wanted=False)
    windows = list(base.windows(audio, state, base.options(), None, final=True))
    assert calls == [1] and state.language == "en" and windows[0].language_prob > 0.5  # auto-detection reads it free

    shipped = _shipped("base")
    reads = shipped.uses("lang.prob")
    assert wants_language_prob(shipped, RequestOptions()) is reads
    assert wants_language_prob(shipped, RequestOptions(return_features=True)) is True
    assert wants_language_prob(None, RequestOptions()) is False
    monkeypatch.setattr(type(shipped), "uses", lambda self, prefix: "lang.margin".startswith(prefix))
    assert wants_language_prob(shipped, RequestOptions()) is True

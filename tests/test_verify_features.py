"""Verify's style-robust features: alignment with the guard's own decode, and Verify end to end on fixtures.

The end-to-end tests run the real tiny.en model; they assert verdicts on clear cases and that the
features of two styles of one transcript agree, never exact scores (int8 decodes differ by CPU).
"""
from __future__ import annotations

import math

import pytest

from guard.config import PolicyMode
from guard.results import RequestOptions, TranscriptSegment, Verdict
from guard.verify_features import OwnDecode, align_window, logprob_features, normalised_words
from tests.conftest import MUSIC, SPEECH, SPEECH_TEXT

OWN = "That agent is already logged on. Please enter your agent number followed by the pound key."
STYLES = {
    "written": SPEECH_TEXT,
    "lowercase, no punctuation": "that agent is already logged on please enter your agent number followed by the pound key",
    "Whisper normaliser": "that agent is already logged on please enter your agent number followed by the pound key",
    "shouting": "THAT AGENT IS ALREADY LOGGED ON!!! PLEASE ENTER YOUR AGENT NUMBER FOLLOWED BY THE POUND KEY",
}


def test_normalised_words_equate_case_punctuation_and_number_format():
    assert normalised_words("Press FIFTY, then #.", "en") == normalised_words("press 50 then", "en")
    assert normalised_words("Nineteenth.", "en") == normalised_words("19th", "en")


@pytest.mark.parametrize("style", list(STYLES))
def test_every_style_of_a_matching_transcript_teacher_forces_the_decodes_own_text(style):
    [a] = align_window([STYLES[style]], OWN, "en")
    assert a.canonical == OWN
    assert a.features["verify.own_match_share"] == 1.0
    assert a.features["verify.own_exact"] == 1.0
    assert a.features["verify.own_missing_words"] == 0.0


def test_numbers_as_digits_or_words_align_alike():
    digits = align_window(["press 5 for the 19th floor"], "Press five for the nineteenth floor.", "en")[0]
    words = align_window(["Press five for the nineteenth floor"], "Press five for the nineteenth floor.", "en")[0]
    assert digits.canonical == words.canonical == "Press five for the nineteenth floor."
    assert digits.features == words.features


def test_unmatched_words_are_normalised_so_styles_still_agree():
    a = align_window(["That agent is busy, SORRY."], OWN, "en")[0]
    b = align_window(["that agent is busy sorry"], OWN, "en")[0]
    assert a.canonical == b.canonical and a.features == b.features
    assert 0 < a.features["verify.own_match_share"] < 1


def test_an_appended_sentence_and_a_dropped_phrase_show_in_the_agreement():
    appended = align_window([SPEECH_TEXT + " Thanks for watching, see you next time!"], OWN, "en")[0]
    assert appended.features["verify.own_unmatched_words"] >= 6
    assert appended.features["verify.own_unmatched_run"] >= 6  # one stretch, not scattered words
    dropped = align_window(["That agent is already logged on. Please enter the pound key."], OWN, "en")[0]
    assert dropped.features["verify.own_missing_words"] >= 4
    assert dropped.features["verify.own_missing_run"] == dropped.features["verify.own_missing_words"]
    assert dropped.features["verify.own_match_share"] == 1.0


def test_scattered_substitutions_are_short_runs():
    a = align_window(["That agent is all ready logged in. Please enter your agent member followed by the pound key."],
                     OWN, "en")[0]
    assert a.features["verify.own_unmatched_words"] >= 3
    assert a.features["verify.own_unmatched_run"] <= 2


@pytest.mark.parametrize("given", ["Please enter your agent number followed by the pound key.",
                                   "That agent is already logged on. Please enter your agent number"])
def test_a_phrase_dropped_at_either_end_shows_as_edge_words(given):
    [a] = align_window([given], OWN, "en")
    assert a.features["verify.own_missing_words"] == 0.0  # nothing is missing between its words
    assert a.features["verify.own_missing_edge_words"] >= 4
    [whole] = align_window([SPEECH_TEXT], OWN, "en")
    assert whole.features["verify.own_missing_edge_words"] == 0.0


def test_edge_words_between_two_segments_count_for_both():
    first, second = align_window(["That agent is already logged on.", "followed by the pound key"], OWN, "en")
    assert first.features["verify.own_missing_edge_words"] == second.features["verify.own_missing_edge_words"] == 5  # "please enter your agent number"


def test_segments_of_one_window_are_aligned_together():
    first, second = align_window(["That agent is already logged on.", "please enter your agent number"], OWN, "en")
    assert first.features["verify.own_match_share"] == second.features["verify.own_match_share"] == 1.0
    assert first.canonical == "That agent is already logged on."
    assert second.canonical == "Please enter your agent number"


def test_text_without_words_is_teacher_forced_as_given():
    [a] = align_window(["♪"], "", "en")
    assert a.canonical == "♪" and a.features["verify.own_match_share"] == 0.0


def test_logprob_gap_is_the_own_path_minus_the_given_text():
    f = logprob_features(-0.9, -0.8, OwnDecode("x", -0.3, 0.1))
    assert math.isclose(f["verify.logprob_gap_segment"], 0.6)
    assert math.isclose(f["verify.logprob_gap_window"], 0.5)


# ---------------------------------------------------------------- end to end (real tiny.en)
FLAG = RequestOptions(policy=PolicyMode.flag, return_features=True)


@pytest.mark.parametrize("style", ["written", "lowercase, no punctuation", "Whisper normaliser"])
def test_the_true_transcript_passes_in_every_style(guard, load_audio, style):
    result = guard.verify(load_audio(SPEECH), [TranscriptSegment(text=STYLES[style])], FLAG)
    [seg] = result.segments
    assert seg.verdict is Verdict.pass_, (style, seg.score, seg.reasons)
    assert seg.segment.text.strip() == STYLES[style]  # the caller's text comes back, not the canonical one


def test_the_features_do_not_depend_on_the_style(guard, load_audio):
    audio = load_audio(SPEECH)
    a = guard.verify(audio, [TranscriptSegment(text=STYLES["written"])], FLAG).segments[0]
    b = guard.verify(audio, [TranscriptSegment(text=STYLES["lowercase, no punctuation"])], FLAG).segments[0]
    assert a.features.keys() == b.features.keys()
    for k in a.features:
        assert math.isclose(a.features[k], b.features[k], rel_tol=1e-4, abs_tol=1e-4), k
    assert math.isclose(a.score, b.score, rel_tol=1e-4, abs_tol=1e-5)


def test_a_boh_phrase_on_music_is_flagged(guard, load_audio):
    [seg] = guard.verify(load_audio(MUSIC), [TranscriptSegment(text="Thank you for watching!")], FLAG).segments
    assert seg.verdict is Verdict.flag and seg.reasons


def test_an_invented_sentence_appended_to_the_true_one_is_flagged(guard, load_audio):
    text = SPEECH_TEXT + " Please subscribe to my channel and ring the bell."
    [seg] = guard.verify(load_audio(SPEECH), [TranscriptSegment(text=text, start=0.0, end=5.9)], FLAG).segments
    assert seg.verdict is Verdict.flag, (seg.score, seg.reasons)


def test_verify_reports_its_own_calibrations_reasons(guard, load_audio):
    """Reasons name features of the calibration that scored (the verify one when shipped)."""
    bundle = guard.bundle(None)
    calibration = bundle.verify_calibration or bundle.calibration
    [seg] = guard.verify(load_audio(MUSIC), [TranscriptSegment(text="Thank you for watching!")], FLAG).segments
    assert {r.feature for r in seg.reasons} <= set(calibration.features)
    assert all(r.contribution > 0 for r in seg.reasons)

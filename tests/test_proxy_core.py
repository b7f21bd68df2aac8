"""guard/proxy.py with the real Guard and the real upstream (faster-whisper-server on loopback):
the upstream writes, the local model verifies, the policy applies, the upstream's text is kept."""
from __future__ import annotations

import math

import pytest
from conftest import MUSIC, SFX, SPEECH, SPEECH_TEXT
from prometheus_client import CollectorRegistry
from upstream_stubs import answer_json, stub_upstream, verbose
from whisper_normalizer.english import EnglishTextNormalizer

from guard.asr import SAMPLE_RATE
from guard.config import PolicyMode
from guard.proxy import FRAME, VerifyingProxy, verifiable
from guard.results import RequestOptions, Verdict
from guard.upstream import UpstreamAudio, UpstreamBadResponse, UpstreamClient, UpstreamSegment
from guard.upstream_metrics import UpstreamMetrics

norm = EnglishTextNormalizer()
SUPPRESS = RequestOptions(policy=PolicyMode.suppress)  # the shipped Verify thresholds (see proxy_fixtures)


def run(guard, proxy: VerifyingProxy, path, load_audio, options=SUPPRESS):
    upstream = proxy.forward(UpstreamAudio(path.read_bytes(), path.name), [("model", "whisper-1")])
    return proxy.verify(guard, load_audio(path), upstream, options)


@pytest.fixture
def proxy(guard, peer):
    client = UpstreamClient(peer.base_url)
    yield VerifyingProxy(client)
    client.close()


def test_speech_passes_with_the_upstreams_text_unchanged(guard, proxy, load_audio, peer):
    out = run(guard, proxy, SPEECH, load_audio)
    assert out.result.segments and all(s.verdict is Verdict.pass_ for s in out.result.segments)
    # the client gets exactly the upstream's segment texts and times
    assert [s.segment.text for s in out.result.segments] == [s.text for s in out.upstream.segments]
    assert [(s.segment.start, s.segment.end) for s in out.result.segments] == \
        [(s.start, s.end) for s in out.upstream.segments]
    assert norm(out.result.text) == norm(SPEECH_TEXT) == norm(out.upstream.text)
    assert out.source == out.result.source == {"kind": "upstream", "upstream": peer.base_url, "model": "whisper-1",
                                               "upstream_seconds": round(out.upstream.seconds, 4)}
    assert out.result.timings["upstream"] == out.upstream.seconds


def test_nonspeech_hallucination_is_suppressed(guard, proxy, load_audio):
    out = run(guard, proxy, MUSIC, load_audio)
    assert out.upstream.text.strip(), "the upstream wrote text on music (that is the case under test)"
    assert out.result.segments and all(s.verdict is Verdict.suppress for s in out.result.segments)
    assert out.result.text == ""


def test_annotate_scores_but_keeps_everything(guard, proxy, load_audio):
    out = run(guard, proxy, MUSIC, load_audio, RequestOptions(policy=PolicyMode.annotate))
    assert all(s.verdict is Verdict.pass_ for s in out.result.segments)
    assert norm(out.result.text) == norm(out.upstream.text)
    assert max(s.score for s in out.result.segments) > 0.5


def test_segments_past_the_end_of_the_audio_are_verified(guard, proxy, load_audio):
    # faster-whisper-server writes 0.0 -> 7.0 s on this 4.0 s clip; Guard.verify alone refuses
    # ends past the audio; the proxy clamps for scoring and still answers the upstream's times.
    out = run(guard, proxy, SFX, load_audio)
    duration = len(load_audio(SFX)) / SAMPLE_RATE
    assert out.result.segments
    assert [(s.segment.start, s.segment.end) for s in out.result.segments] == \
        [(s.start, s.end) for s in out.upstream.segments]
    assert all(math.isfinite(s.score) and 0 <= s.score <= 1 for s in out.result.segments)
    assert duration < 30


def test_verifiable_clamps_drops_blanks_and_sorts():
    segs = [UpstreamSegment(5.0, 9.0, " late"), UpstreamSegment(0.0, 1.0, "  "), UpstreamSegment(0.0, 2.0, " a"),
            UpstreamSegment(12.0, 13.0, " after the end")]
    out = verifiable(segs, 8.0)
    assert [i for i, _ in out] == [2, 0, 3]
    assert [(s.start, s.end) for _, s in out] == [(0.0, 2.0), (5.0, 8.0), (8.0 - FRAME, 8.0)]
    assert verifiable([UpstreamSegment(None, None, " x")], 3.0)[0][1].start is None


def test_unverifiable_segments_are_a_bad_response(guard, load_audio):
    reg = CollectorRegistry()
    metrics = UpstreamMetrics(reg)
    long_seg = verbose([(0.0, 1.0, " a"), (1.0, 31.5, " one segment longer than a window")], duration=36.0)
    with stub_upstream(answer_json(200, long_seg)) as stub:
        client = UpstreamClient(stub.base_url, observer=metrics)
        proxy = VerifyingProxy(client, on_unverifiable=metrics.unverifiable)
        try:
            from conftest import LONG

            with pytest.raises(UpstreamBadResponse) as e:
                run(guard, proxy, LONG, load_audio)
        finally:
            client.close()
    assert "cannot verify" in e.value.message and "longer than 30 s" in e.value.message
    assert reg.get_sample_value("whisper_guard_upstream_errors_total", {"kind": "bad_response"}) == 1


def test_no_segments_is_an_empty_result(guard, load_audio):
    with stub_upstream(answer_json(200, verbose([], duration=2.0))) as stub:
        client = UpstreamClient(stub.base_url)
        try:
            out = run(guard, VerifyingProxy(client), MUSIC, load_audio)
        finally:
            client.close()
    assert out.result.segments == [] and out.result.text == "" and out.result.audio_seconds > 1

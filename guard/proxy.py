"""The verifying proxy: an upstream ASR writes the transcript, the local model verifies it.

Two steps, so that a transport can run them apart:
1. `forward`: the request goes to the upstream (guard/upstream.py); network wait only, so it runs
   outside the guard's inference admission: a slow upstream never holds an inference slot.
2. `verify`: the upstream's segments are scored against the decoded audio by `Guard.verify`
   (teacher-forced local model, inside admission), the policy applies, and the upstream's own
   segment texts and times are what the result carries (the scores are the local model's).

What the upstream returns is made verifiable, not trusted:
- segments with blank text are left out (they carry nothing to ship or score);
- times are clamped to the audio: Whisper-family upstreams write an end past the last sample on
  short clips (faster-whisper-server gives 0.0-7.0 s for a 4.0 s clip); a segment that starts
  at or after the end is placed on the audio's last 20 ms, where it is scored like any other;
- a segment list that still cannot be placed (a segment over 30 s, more tokens than a window
  holds) is `UpstreamBadResponse` (502), with the reason: the client sent nothing wrong;
- no segments at all (the upstream heard nothing) is an empty result, not an error.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from guard.asr import SAMPLE_RATE
from guard.errors import TranscriptError
from guard.results import GuardResult, RequestOptions, TranscriptSegment
from guard.upstream import UpstreamAudio, UpstreamBadResponse, UpstreamClient, UpstreamSegment, UpstreamTranscript

FRAME = 0.02  # one encoder frame: the finest time a segment can be placed at


@dataclass
class ProxyResult:
    """The verified result, and where its text came from."""

    result: GuardResult
    upstream: UpstreamTranscript

    @property
    def source(self) -> dict:
        """Provenance for the answer (a header and verbose_json's `guard.source`)."""
        u = self.upstream
        return {"kind": "upstream", "upstream": u.upstream, "model": u.model,
                "upstream_seconds": round(u.seconds, 4)}


def verifiable(segments: Sequence[UpstreamSegment], duration: float) -> list[tuple[int, TranscriptSegment]]:
    """(upstream index, segment to verify) for each non-blank segment, times clamped to the audio,
    sorted by start (stable: Guard.verify orders windows by start too)."""
    out = []
    last = max(0.0, duration - FRAME)
    for i, s in enumerate(segments):
        if not s.text.strip():
            continue
        if s.start is None or s.end is None:
            out.append((i, TranscriptSegment(text=s.text)))
            continue
        start = min(s.start, last)
        end = min(max(s.end, start + FRAME), duration) if duration > 0 else s.end
        if end <= start:
            end = start + FRAME
        out.append((i, TranscriptSegment(text=s.text, start=start, end=end)))
    out.sort(key=lambda p: (p[1].start or 0.0))
    return out


class VerifyingProxy:
    """An `UpstreamClient` plus the guard that verifies what it returns."""

    def __init__(self, client: UpstreamClient, on_unverifiable: Callable[[], None] | None = None):
        self.client = client
        self._on_unverifiable = on_unverifiable

    @property
    def name(self) -> str:
        return self.client.name

    def forward(self, audio: UpstreamAudio, fields: Sequence[tuple[str, str]], *,
                timeout: float | None = None) -> UpstreamTranscript:
        return self.client.transcribe(audio, fields, timeout=timeout)

    def verify(self, guard, samples: np.ndarray, upstream: UpstreamTranscript, options: RequestOptions,
               cancel: Callable[[], bool] | None = None) -> ProxyResult:
        """Score the upstream's segments with `guard` (a loaded `guard.pipeline.Guard`)."""
        duration = len(samples) / SAMPLE_RATE
        todo = verifiable(upstream.segments, duration)
        if not todo:
            bundle = guard.bundle(options.model)
            policy = guard.policy(bundle, options)
            empty = GuardResult([], bundle.name, options.language or "en", duration, policy.mode,
                                dict.fromkeys(("transcribe", "probe", "signature", "score"), 0.0))
            return self._done(empty, upstream)
        try:
            result = guard.verify(samples, [seg for _, seg in todo], options, cancel)
        except TranscriptError as e:
            if self._on_unverifiable is not None:
                self._on_unverifiable()
            raise UpstreamBadResponse(f"upstream {upstream.upstream} returned segments the guard cannot verify: "
                                      f"{e.message}", upstream=upstream.upstream, status=200) from None
        # Guard.verify writes " " + stripped text and the clamped times; the client gets the
        # upstream's segments as they were, each with the guard's score and verdict.
        if len(result.segments) == len(todo):
            for scored, (i, _) in zip(result.segments, todo):
                u = upstream.segments[i]
                scored.segment = dataclasses.replace(
                    scored.segment, text=u.text, start=scored.segment.start if u.start is None else u.start,
                    end=scored.segment.end if u.end is None else u.end)
        return self._done(result, upstream)

    @staticmethod
    def _done(result: GuardResult, upstream: UpstreamTranscript) -> ProxyResult:
        out = ProxyResult(result, upstream)
        result.source = out.source
        result.timings = {"upstream": upstream.seconds, **result.timings}
        return out

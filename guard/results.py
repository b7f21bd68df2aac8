"""What flows between stages: request options in (pydantic, validated at the edge), results out."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from guard.config import PolicyMode


class Verdict(str, Enum):
    pass_ = "pass"
    flag = "flag"
    suppress = "suppress"


class RequestOptions(BaseModel):
    """Per-request options; None means the server's configured default."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=64)
    language: str | None = Field(None, min_length=2, max_length=8)
    beam_size: int | None = Field(None, ge=1, le=16)
    policy: PolicyMode | None = None
    flag_threshold: float | None = Field(None, ge=0, le=1)
    suppress_threshold: float | None = Field(None, ge=0, le=1)
    return_features: bool = False


class TranscriptSegment(BaseModel):
    """One segment of a transcript produced elsewhere, for Verify. Times are optional."""

    text: str = Field(..., max_length=4000)
    start: float | None = Field(None, ge=0)
    end: float | None = Field(None, ge=0)


@dataclass
class Segment:
    """A transcribed (or verified) segment: its tokens and the decoder's own confidence."""

    index: int
    window: int  # which 30 s window wrote it
    start: float
    end: float
    text: str
    tokens: list[int]  # text and timestamp tokens as emitted
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float = 0.0


@dataclass
class Reason:
    """A feature's push on the score: its name, value and contribution in logits."""

    feature: str
    value: float
    contribution: float


@dataclass
class ScoredSegment:
    segment: Segment
    score: float  # attractor-regime score in [0, 1]
    verdict: Verdict
    reasons: list[Reason] = field(default_factory=list)
    features: dict[str, float] | None = None


@dataclass
class GuardResult:
    segments: list[ScoredSegment]
    model: str
    language: str
    audio_seconds: float
    policy: PolicyMode
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    @property
    def text(self) -> str:
        """The transcript with suppressed segments left out."""
        return kept_text(self.segments)


def kept_text(segments: list[ScoredSegment]) -> str:
    """The segments' texts, suppressed ones left out, one space apart (segment texts carry no
    leading or trailing space: Whisper's leading space is stripped where segments are made)."""
    return " ".join(t for s in segments if s.verdict is not Verdict.suppress and (t := s.segment.text.strip()))

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


class Granularity(str, Enum):
    """What the policy removes from the response text under suppress: whole segments, or words."""

    segment = "segment"
    word = "word"


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
    prompt: str | None = Field(None, max_length=4000)  # faster-whisper's initial_prompt
    temperature: float | None = Field(None, gt=0, le=1)  # one sampling temperature instead of the ladder
    word_timestamps: bool = False
    granularity: Granularity = Granularity.segment  # word: implies word_timestamps


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
class Word:
    """One word with its timing (from the probe's alignment heads), the decoder's probability, and
    its own hallucination score and verdict."""

    word: str  # as Whisper wrote it, leading space and attached punctuation included
    start: float
    end: float
    probability: float
    score: float
    verdict: Verdict
    features: dict[str, float] | None = None


def word_json(w: Word) -> dict:
    """A word as the JSON outputs (CLI rows, manifest rows) write it; features only when computed."""
    return {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "probability": round(w.probability, 4),
            "score": round(w.score, 4), "verdict": w.verdict.value,
            **({"features": w.features} if w.features is not None else {})}


@dataclass
class ScoredSegment:
    segment: Segment
    score: float  # attractor-regime score in [0, 1]
    verdict: Verdict
    reasons: list[Reason] = field(default_factory=list)
    features: dict[str, float] | None = None
    words: list[Word] | None = None  # when word timestamps were asked for

    def kept_text(self, granularity: "Granularity") -> str:
        """The segment's contribution to the response text under a policy of this granularity."""
        if granularity is Granularity.word and self.words is not None:
            return "".join(w.word for w in self.words if w.verdict is not Verdict.suppress)
        return "" if self.verdict is Verdict.suppress else self.segment.text


@dataclass
class GuardResult:
    segments: list[ScoredSegment]
    model: str
    language: str
    audio_seconds: float
    policy: PolicyMode
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    granularity: Granularity = Granularity.segment
    source: dict | None = None  # where the text came from when not this guard (proxy: the upstream)

    @property
    def text(self) -> str:
        """The transcript with suppressed segments (or, at word granularity, suppressed words) left out."""
        return kept_text(self.segments, self.granularity)


def kept_text(segments: list[ScoredSegment], granularity: Granularity = Granularity.segment) -> str:
    """The segments' kept texts one space apart (segment texts carry no leading or trailing space:
    Whisper's leading space is stripped where segments are made; words keep theirs, so their
    concatenation is stripped per segment)."""
    return " ".join(t for s in segments if (t := s.kept_text(granularity).strip()))

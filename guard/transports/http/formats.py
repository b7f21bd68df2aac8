"""Guard results in OpenAI's response formats: json, text, srt, vtt, verbose_json, and SSE events.

`text` is the transcript without suppressed segments in every format (as gRPC's `text`). text,
srt and vtt carry only what is kept; json and verbose_json keep every segment, marked with a
`guard` object (score, verdict, reasons), so a client sees what was suppressed and why.
"""
from __future__ import annotations

import json

from guard.results import GuardResult, ScoredSegment, Verdict
from guard.transports.http.forms import ResponseFormat

LANGUAGE_NAMES = {"en": "english"}  # OpenAI's verbose_json names the language; others keep their code


def kept(segments: list[ScoredSegment]) -> list[ScoredSegment]:
    return [s for s in segments if s.verdict is not Verdict.suppress]


def guard_of(s: ScoredSegment, with_features: bool = False) -> dict:
    out = {"score": round(float(s.score), 6), "verdict": Verdict(s.verdict).value,
           "reasons": [{"feature": r.feature, "value": float(r.value), "contribution": float(r.contribution)}
                       for r in s.reasons]}
    if with_features and s.features:
        out["features"] = {k: float(v) for k, v in s.features.items()}
    return out


def segment_json(s: ScoredSegment, seek: int, with_features: bool = False) -> dict:
    """OpenAI's TranscriptionSegment fields, plus `guard`."""
    seg = s.segment
    return {"id": seg.index, "seek": seek, "start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text,
            "tokens": [int(t) for t in seg.tokens], "temperature": float(seg.temperature),
            "avg_logprob": float(seg.avg_logprob), "compression_ratio": float(seg.compression_ratio),
            "no_speech_prob": float(seg.no_speech_prob), "guard": guard_of(s, with_features)}


def summary(result: GuardResult, processing: float, queued: float, inference: float | None = None) -> dict:
    segs = result.segments
    out = {"model": result.model, "policy": str(getattr(result.policy, "value", result.policy)),
           "segments": len(segs), "flagged": sum(1 for s in segs if s.verdict is Verdict.flag),
           "suppressed": sum(1 for s in segs if s.verdict is Verdict.suppress),
           "processing_seconds": round(processing, 4), "queued_seconds": round(queued, 4),
           "timings": {k: round(v, 4) for k, v in result.timings.items()}}
    if inference is not None:  # wall time inside the pipeline: what the same call costs in-process
        out["inference_seconds"] = round(inference, 4)
    if result.source:  # where the text came from when not this guard (proxy mode: the upstream)
        out["source"] = result.source
    return out


SOURCE_HEADER = "x-whisper-guard-upstream"  # proxy mode: the upstream's base URL (no credentials)
SOURCE_MODEL_HEADER = "x-whisper-guard-upstream-model"


def source_headers(result: GuardResult | None) -> dict[str, str]:
    """Headers naming where the text came from, when not this guard (the proxy's upstream)."""
    source = result.source if result is not None else None
    if not source or source.get("kind") != "upstream":
        return {}
    headers = {SOURCE_HEADER: _latin1(source["upstream"])}
    if source.get("model"):
        headers[SOURCE_MODEL_HEADER] = _latin1(source["model"])
    return headers


def _latin1(value: str) -> str:
    return "".join(c for c in str(value) if 32 <= ord(c) < 127)[:200]


def words_json(result: GuardResult) -> list[dict]:
    """OpenAI's TranscriptionWord fields (word, start, end) for every word, plus the guard's own
    (probability, score, verdict)."""
    return [{"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3),
             "probability": round(float(w.probability), 4),
             "guard": {"score": round(float(w.score), 6), "verdict": Verdict(w.verdict).value}}
            for s in result.segments for w in (s.words or ())]


def verbose(result: GuardResult, processing: float, queued: float, granularities: list[str],
            task: str = "transcribe", with_features: bool = False, inference: float | None = None) -> dict:
    seek_of = _seeks(result)
    out = {"task": task, "language": LANGUAGE_NAMES.get(result.language, result.language),
           "duration": round(result.audio_seconds, 3), "text": result.text,
           "segments": [segment_json(s, seek_of(s), with_features) for s in result.segments],
           "usage": {"type": "duration", "seconds": round(result.audio_seconds, 3)},
           "guard": summary(result, processing, queued, inference)}
    if "segment" not in granularities:
        out.pop("segments")
    if "word" in granularities:
        out["words"] = words_json(result)
    return out


def _seeks(result: GuardResult):
    """A segment's `seek`: the mel frame (10 ms) its 30 s window started at, as Whisper reports it."""
    starts: dict[int, float] = {}
    for s in result.segments:
        starts[s.segment.window] = min(starts.get(s.segment.window, s.segment.start), s.segment.start)
    return lambda s: max(0, int(starts[s.segment.window] * 100)) if s.segment.window >= 0 else 0


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(segments: list[ScoredSegment]) -> str:
    blocks = [f"{i}\n{_clock(s.segment.start, ',')} --> {_clock(s.segment.end, ',')}\n{s.segment.text.strip()}\n"
              for i, s in enumerate(kept(segments), 1)]
    return "\n".join(blocks)


def vtt(segments: list[ScoredSegment]) -> str:
    blocks = [f"{_clock(s.segment.start, '.')} --> {_clock(s.segment.end, '.')}\n{s.segment.text.strip()}\n"
              for s in kept(segments)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render(fmt: ResponseFormat, result: GuardResult, processing: float, queued: float,
           granularities: list[str], with_features: bool = False, inference: float | None = None) -> tuple[str, str]:
    """(body, media type) of a finished transcription."""
    if fmt is ResponseFormat.text:
        return result.text + "\n", "text/plain; charset=utf-8"
    if fmt is ResponseFormat.srt:
        return srt(result.segments), "application/x-subrip; charset=utf-8"
    if fmt is ResponseFormat.vtt:
        return vtt(result.segments), "text/vtt; charset=utf-8"
    if fmt is ResponseFormat.verbose_json:
        body = verbose(result, processing, queued, granularities, with_features=with_features, inference=inference)
    else:
        seek_of = _seeks(result)
        body = {"text": result.text,
                "usage": {"type": "duration", "seconds": round(result.audio_seconds, 3)},
                "guard": {**summary(result, processing, queued, inference),
                          "marks": [{"id": s.segment.index, "start": round(s.segment.start, 3),
                                     "end": round(s.segment.end, 3), "seek": seek_of(s), **guard_of(s)}
                                    for s in result.segments]}}
    return json.dumps(body, ensure_ascii=False), "application/json"


# ---- server-sent events (stream=true) ---------------------------------------------------------------


def sse(data: dict) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def segment_events(segments: list[ScoredSegment], first: bool = True) -> tuple[list[dict], bool]:
    """Per segment: a `transcript.text.segment` (every segment, with `guard`) and, for kept ones,
    a `transcript.text.delta` carrying its text (one space before all but the first kept text,
    so the deltas concatenate to the done event's text). Returns (events, still first)."""
    out = []
    for s in segments:
        seg = s.segment
        text = seg.text.strip()
        if s.verdict is not Verdict.suppress and text:
            out.append({"type": "transcript.text.delta", "delta": text if first else " " + text,
                        "segment_id": str(seg.index)})
            first = False
        out.append({"type": "transcript.text.segment", "id": str(seg.index), "start": round(seg.start, 3),
                    "end": round(seg.end, 3), "text": seg.text, "speaker": "", "guard": guard_of(s)})
    return out, first


def done_event(result: GuardResult, processing: float, queued: float) -> dict:
    return {"type": "transcript.text.done", "text": result.text,
            "guard": summary(result, processing, queued)}

"""The fields of OpenAI's transcription form (and the guard's verify form), validated with pydantic.

`timestamp_granularities[]=word` turns on the pipeline's per-word timestamps and scores (with
response_format=verbose_json, as OpenAI requires). Unknown fields are refused by name rather
than ignored.
"""
from __future__ import annotations

import dataclasses
import json
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guard.config import PolicyMode
from guard.errors import BadRequest, OptionsError
from guard.results import RequestOptions, TranscriptSegment
from guard.serving.options import describe_validation, request_options, transcript_segment
from guard.transports.http.multipart import Part

OPENAI_MODEL_ALIASES = ("whisper-1",)  # what OpenAI clients send; served by the default model


class ResponseFormat(str, Enum):
    json = "json"
    text = "text"
    srt = "srt"
    vtt = "vtt"
    verbose_json = "verbose_json"


class FormError(BadRequest):
    """A bad form field; `param` names it (OpenAI's error `param`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class _Fields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    language: str | None = Field(None, min_length=2, max_length=8)
    prompt: str | None = Field(None, max_length=4000)
    response_format: ResponseFormat = ResponseFormat.json
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=list)
    stream: bool = False
    guard_policy: PolicyMode | None = None
    guard_flag_threshold: float | None = Field(None, ge=0, le=1)
    guard_suppress_threshold: float | None = Field(None, ge=0, le=1)


class _VerifyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    language: str | None = Field(None, min_length=2, max_length=8)
    transcript: str = Field(..., min_length=1, max_length=256 * 1024)
    response_format: Literal["json", "verbose_json"] = "verbose_json"
    guard_policy: PolicyMode | None = None
    guard_flag_threshold: float | None = Field(None, ge=0, le=1)
    guard_suppress_threshold: float | None = Field(None, ge=0, le=1)


@dataclasses.dataclass
class TranscriptionForm:
    audio: bytes
    filename: str | None
    model: str | None  # as sent (for the reply)
    options: RequestOptions
    response_format: ResponseFormat
    granularities: list[str]
    stream: bool
    sent: dict = dataclasses.field(default_factory=dict)  # the text fields as sent (the proxy forwards them)


@dataclasses.dataclass
class VerifyForm:
    audio: bytes
    model: str | None
    options: RequestOptions
    transcript: list[TranscriptSegment]
    verbose: bool


_LIST_FIELDS = {"timestamp_granularities[]": "timestamp_granularities", "timestamp_granularities": "timestamp_granularities"}


def _collect(parts: list[Part]) -> tuple[Part | None, dict]:
    file, fields = None, {}
    for part in parts:
        if part.name == "file":
            if file is not None:
                raise FormError("send exactly one `file`", "file")
            file = part
            continue
        if part.filename is not None:
            raise FormError(f"unexpected file in field {part.name!r}: only `file` carries audio", part.name)
        name = _LIST_FIELDS.get(part.name, part.name)
        value = part.text()
        if name == "timestamp_granularities":
            fields.setdefault(name, []).append(value)
        elif name in fields:
            raise FormError(f"field {part.name!r} given more than once", part.name)
        else:
            fields[name] = value
    return file, fields


def _validated(model: type[BaseModel], fields: dict):
    try:
        return model(**fields)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        loc = first.get("loc") or ("form",)
        param = str(loc[0])
        if first.get("type") == "extra_forbidden":
            allowed = ", ".join(n for n in model.model_fields if n != "timestamp_granularities")
            raise FormError(f"unknown field {param!r}; this endpoint takes file, {allowed}"
                            + (", timestamp_granularities[]" if "timestamp_granularities" in model.model_fields else ""),
                            param) from None
        raise FormError(describe_validation(e, ""), param + ("[]" if param == "timestamp_granularities" else "")) from None


def resolve_model(name: str | None, served: dict[str, str]) -> str | None:
    """An OpenAI-style model name -> a served model (None = default). `served`: name -> model dir.

    Accepts the served names, `whisper-1`, the model's directory as configured on this server,
    and `<org>/faster-whisper-<name>` (what faster-whisper-server clients send)."""
    if name is None or name in ("", *OPENAI_MODEL_ALIASES):
        return None
    if name in served:
        return name
    for model, path in served.items():
        if name == path or name.rstrip("/").rsplit("/", 1)[-1] in (f"faster-whisper-{model}", f"whisper-{model}"):
            return model
    return name  # unknown: the pipeline answers unknown_model (404) with the list of served models


def _options(f, served: dict[str, str], extra: dict) -> RequestOptions:
    fields = {"model": resolve_model(f.model, served), "language": f.language, "policy": f.guard_policy,
              "flag_threshold": f.guard_flag_threshold, "suppress_threshold": f.guard_suppress_threshold, **extra}
    try:
        return request_options({k: v for k, v in fields.items() if v is not None})
    except OptionsError as e:
        raise FormError(e.message.replace("options.", ""), None) from None


def _audio(file: Part | None) -> bytes:
    if file is None:
        raise FormError("missing `file`: the audio to transcribe, as a multipart file field", "file")
    if not file.data:
        raise FormError("`file` is empty: send an audio file's bytes", "file")
    return bytes(file.data)


def transcription_form(parts: list[Part], served: dict[str, str]) -> TranscriptionForm:
    file, fields = _collect(parts)
    f = _validated(_Fields, fields)
    if "word" in f.timestamp_granularities:
        if f.response_format is not ResponseFormat.verbose_json:
            raise FormError("timestamp_granularities[] needs response_format=verbose_json", "timestamp_granularities[]")
    extra = {"word_timestamps": True} if "word" in f.timestamp_granularities else {}
    if f.prompt:
        extra["prompt"] = f.prompt
    if f.temperature:
        extra["temperature"] = f.temperature
    options = _options(f, served, extra)
    return TranscriptionForm(_audio(file), file.filename, f.model, options, f.response_format,
                             list(dict.fromkeys(f.timestamp_granularities or ["segment"])), f.stream, fields)


def parse_transcript(text: str) -> list[TranscriptSegment]:
    """verbose_json (`{"segments": [{text, start, end}, ...]}`), a JSON list of such segments, or plain text."""
    stripped = text.strip()
    raw = None
    if stripped[:1] in ("{", "["):
        try:
            raw = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise FormError(f"transcript looks like JSON but does not parse: {e.msg} at {e.pos}", "transcript") from None
        if isinstance(raw, dict):
            if "segments" in raw and isinstance(raw["segments"], list):
                raw = raw["segments"]
            elif "text" in raw:
                raw = [{"text": raw["text"]}]
            else:
                raise FormError("a JSON transcript needs `segments` (verbose_json) or `text`", "transcript")
        if not isinstance(raw, list) or not raw:
            raise FormError("a JSON transcript must hold at least one segment", "transcript")
    if raw is None:
        return [transcript_segment({"text": stripped}, "transcript")]
    out = []
    for i, seg in enumerate(raw):
        if not isinstance(seg, dict):
            raise FormError(f"transcript segment {i} must be an object with text (and start, end)", "transcript")
        out.append(transcript_segment({k: seg.get(k) for k in ("text", "start", "end")}, f"transcript[{i}]"))
    return out


def verify_form(parts: list[Part], served: dict[str, str]) -> VerifyForm:
    file, fields = _collect(parts)
    f = _validated(_VerifyFields, fields)
    options = _options(f, served, {})
    return VerifyForm(_audio(file), f.model, options, parse_transcript(f.transcript), f.response_format == "verbose_json")

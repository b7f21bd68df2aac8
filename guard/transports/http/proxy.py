"""`POST /v1/audio/transcriptions` as a verifying proxy (`whisper-guard serve --upstream URL`).

The HTTP app (`create_app(..., transcribe=proxy_transcribe(proxy))`) parses the client's
OpenAI form as usual; this transcription function then, inside the admitted call:
1. decodes the audio locally (bad audio is the client's 400 before the upstream sees it);
2. forwards the form to the upstream (guard/proxy.py -> guard/upstream.py) while holding an
   admission place but no inference slot, with the call's remaining deadline as the limit;
3. verifies the upstream's segments with the local model in an inference slot, and applies the
   request's policy (`guard_policy`, thresholds; the server default otherwise).
The app renders the result in the client's `response_format`, as for the guard's own
transcriptions; the result's `source` names the upstream (header `x-whisper-guard-upstream`,
`guard.source` in json and verbose_json).

What goes upstream: the audio file as the client sent it (bytes and file name), `model` (the
client's, or `--upstream-model`), `language`, `prompt`, `temperature` when the client gave
them; always `response_format=verbose_json` and `timestamp_granularities[]=segment`. The
guard's own fields (`guard_*`) stay here. The local verifier is the server's default model:
the client's `model` names the upstream's model, never a local one.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from guard.errors import Cancelled
from guard.intake import EncodedAudio
from guard.proxy import VerifyingProxy
from guard.results import GuardResult, ScoredSegment
from guard.serving.call import Call
from guard.serving.core import Serving
from guard.transports.http.forms import TranscriptionForm
from guard.upstream import UpstreamAudio

UPSTREAM_HEADER = "x-whisper-guard-upstream"  # the upstream's base URL (no credentials)
UPSTREAM_MODEL_HEADER = "x-whisper-guard-upstream-model"


FORWARDED = ("model", "language", "prompt", "temperature")


def forwarded_fields(form: TranscriptionForm) -> list[tuple[str, str]]:
    """The client's OpenAI fields for the upstream, as sent (shaping fields are set by guard/upstream.py)."""
    return [(k, v) for k, v in form.fields if k in FORWARDED]


def proxy_transcribe(proxy: VerifyingProxy) -> Callable:
    """The app's transcription function for proxy mode."""

    def transcribe(serving: Serving, call: Call, form: TranscriptionForm,
                   emit: Callable[[list[ScoredSegment]], None] | None) -> GuardResult:
        t0 = time.perf_counter()
        samples = EncodedAudio(form.audio, serving.settings.max_audio_seconds).decode()
        decoded = time.perf_counter() - t0
        upstream = proxy.forward(UpstreamAudio(form.audio, form.filename or "audio"), forwarded_fields(form),
                                 timeout=call.time_left())
        if call.cancelled():
            raise Cancelled("the call ended while the upstream was transcribing")
        # The local verifier is the default model; the upstream's prompt/temperature are not ours.
        local = {"model": None}
        for name in ("prompt", "temperature"):
            if name in type(form.options).model_fields:
                local[name] = None
        options = form.options.model_copy(update=local)
        verified = serving.infer(call, lambda _guard, cancel: proxy.verify(samples, upstream, options, cancel))
        result = verified.result
        result.timings = {"decode": decoded, **result.timings}
        result.source = verified.source
        if emit is not None:
            emit([])
            emit(result.segments)
        return result

    return transcribe


def provenance_headers(result: GuardResult | None) -> dict[str, str]:
    source = getattr(result, "source", None) if result is not None else None
    if not source:
        return {}
    headers = {UPSTREAM_HEADER: source["upstream"]}
    if source.get("model"):
        headers[UPSTREAM_MODEL_HEADER] = _header_safe(source["model"])
    return headers


def _header_safe(value: str) -> str:
    return "".join(c for c in str(value) if 32 <= ord(c) < 127)[:200]

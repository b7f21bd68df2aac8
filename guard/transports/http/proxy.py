"""`POST /v1/audio/transcriptions` as a verifying proxy (`whisper-guard serve --upstream URL`).

The HTTP app (`create_app(..., transcribe=proxy_transcribe(proxy))`) parses the client's OpenAI
form as for the guard's own transcriptions; this transcription function then, inside the
admitted call:
1. decodes the audio locally (bad audio is the client's 400 before the upstream sees it);
2. forwards the request to the upstream (guard/proxy.py -> guard/upstream.py) while holding an
   admission place but no inference slot, within the call's remaining deadline;
3. verifies the upstream's segments with the local model in an inference slot and applies the
   request's policy (`guard_policy` and thresholds, else the server's default).
The app renders the result in the client's `response_format`; `result.source` names the upstream
(headers `x-whisper-guard-upstream[-model]`, `guard.source` in json and verbose_json and in the
stream's done event).

What goes upstream: the audio file as the client sent it (bytes and file name) and the client's
`model` (or `--upstream-model`), `language`, `prompt` and `temperature` fields as sent; always
`response_format=verbose_json` and `timestamp_granularities[]=segment`, never `stream`. The
guard's own fields (`guard_*`) stay here. The local verifier is the server's default model: the
client's `model` names the upstream's model, never a local one.
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
from guard.serving.tls import ServeError
from guard.transports.http.forms import TranscriptionForm
from guard.upstream import UpstreamAudio, UpstreamConfigError, client_from_settings

FORWARDED = ("model", "language", "prompt", "temperature")


def forwarded_fields(form: TranscriptionForm) -> list[tuple[str, str]]:
    """The client's OpenAI fields for the upstream, as sent (guard/upstream.py sets the shaping ones)."""
    return [(k, form.sent[k]) for k in FORWARDED if isinstance(form.sent.get(k), str)]


def proxy_transcribe(proxy: VerifyingProxy) -> Callable:
    """The app's transcription function in proxy mode."""

    def transcribe(serving: Serving, call: Call, form: TranscriptionForm,
                   emit: Callable[[list[ScoredSegment]], None] | None) -> GuardResult:
        t0 = time.perf_counter()
        samples = EncodedAudio(form.audio, serving.settings.max_audio_seconds).decode()
        decoded = time.perf_counter() - t0
        upstream = proxy.forward(UpstreamAudio(form.audio, form.filename or "audio"), forwarded_fields(form),
                                 timeout=call.time_left())
        if call.cancelled():
            raise Cancelled("the call ended while the upstream was transcribing")
        # The default local model verifies; prompt and temperature were the upstream's to use.
        options = form.options.model_copy(update={"model": None, "prompt": None, "temperature": None})
        verified = serving.infer(call, lambda guard, cancel: proxy.verify(guard, samples, upstream, options, cancel))
        result = verified.result
        result.timings = {"decode": decoded, **result.timings}
        if emit is not None:
            emit([])
            emit(result.segments)
        return result

    return transcribe


def proxy_mode(settings, metrics=None) -> Callable:
    """The transcription function for `--upstream` (a ServeError when the settings cannot work)."""
    from guard.upstream_metrics import UpstreamMetrics

    observer = UpstreamMetrics(metrics.registry) if metrics is not None else None
    try:
        client = client_from_settings(settings, observer)
    except UpstreamConfigError as e:
        raise ServeError(e.message) from None
    proxy = VerifyingProxy(client, on_unverifiable=observer.unverifiable if observer else None)
    return proxy_transcribe(proxy)

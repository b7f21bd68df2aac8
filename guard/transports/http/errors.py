"""Serving outcomes as HTTP statuses with OpenAI-shaped error bodies (the only place that names them).

Every error is `{"error": {"message", "type", "param", "code"}}`, as OpenAI's API sends it, so
the openai SDKs raise their typed exceptions (BadRequestError for 400, AuthenticationError for
401, NotFoundError for 404, RateLimitError for 429, ...).
"""
from __future__ import annotations

from starlette.responses import JSONResponse

from guard.serving.call import REQUEST_ID_KEY, Outcome

RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_UNAVAILABLE_S = 5

# outcome -> (HTTP status, OpenAI error type, error code)
STATUS = {
    Outcome.bad_request: (400, "invalid_request_error", "invalid_value"),
    Outcome.bad_audio: (400, "invalid_request_error", "invalid_audio"),
    Outcome.too_long: (400, "invalid_request_error", "audio_too_long"),
    Outcome.bad_transcript: (400, "invalid_request_error", "invalid_transcript"),
    Outcome.unknown_model: (404, "invalid_request_error", "model_not_found"),
    Outcome.model_broken: (503, "server_error", "model_unavailable"),
    Outcome.unauthenticated: (401, "invalid_request_error", "invalid_api_key"),
    Outcome.busy: (429, "rate_limit_error", "server_busy"),
    Outcome.unavailable: (503, "server_error", "unavailable"),
    Outcome.deadline: (504, "timeout_error", "deadline_exceeded"),
    Outcome.cancelled: (499, "invalid_request_error", "cancelled"),  # nobody is left to read it
    Outcome.internal: (500, "server_error", "internal_error"),
}


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str, code: str | None, *, param: str | None = None,
                   request_id: str | None = None, headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if request_id:
        headers[REQUEST_ID_KEY] = request_id
    return JSONResponse(error_body(message, type_, code, param), status_code=status, headers=headers)


def outcome_response(outcome: Outcome, message: str, request_id: str | None, param: str | None = None) -> JSONResponse:
    status, type_, code = STATUS.get(outcome, STATUS[Outcome.internal])
    headers = {}
    if outcome is Outcome.busy:
        headers["Retry-After"] = str(RETRY_AFTER_BUSY_S)
    elif outcome is Outcome.unavailable:
        headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE_S)
    return error_response(status, message, type_, code, param=param, request_id=request_id, headers=headers)

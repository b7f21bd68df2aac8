"""Serving outcomes as canonical gRPC status codes (the only place that names them)."""
from __future__ import annotations

import grpc

from guard.serving.call import Outcome

STATUS = {
    Outcome.ok: grpc.StatusCode.OK,
    Outcome.bad_request: grpc.StatusCode.INVALID_ARGUMENT,
    Outcome.bad_audio: grpc.StatusCode.INVALID_ARGUMENT,
    Outcome.too_long: grpc.StatusCode.OUT_OF_RANGE,
    Outcome.bad_transcript: grpc.StatusCode.INVALID_ARGUMENT,
    Outcome.unknown_model: grpc.StatusCode.INVALID_ARGUMENT,
    Outcome.model_broken: grpc.StatusCode.FAILED_PRECONDITION,
    Outcome.unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Outcome.busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Outcome.unavailable: grpc.StatusCode.UNAVAILABLE,
    Outcome.deadline: grpc.StatusCode.DEADLINE_EXCEEDED,
    Outcome.cancelled: grpc.StatusCode.CANCELLED,
    Outcome.internal: grpc.StatusCode.INTERNAL,
}


def status_of(outcome: Outcome | None) -> grpc.StatusCode:
    return STATUS.get(outcome, grpc.StatusCode.INTERNAL)

"""Typed errors. Each carries the canonical gRPC status name the service maps it to."""
from __future__ import annotations


class GuardError(Exception):
    """Base class: `code` is a grpc.StatusCode name, `str(err)` a message a user can act on."""

    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class AudioError(GuardError):
    """Audio that cannot be decoded or is not usable (empty, corrupt, NaN, bad rate)."""

    code = "INVALID_ARGUMENT"


class AudioTooLong(AudioError):
    """Audio over the configured duration cap (declared or decoded)."""

    code = "OUT_OF_RANGE"


class OptionsError(GuardError):
    """Request options out of their documented range."""

    code = "INVALID_ARGUMENT"


class TranscriptError(GuardError):
    """A transcript given for verification that cannot be tokenized or placed."""

    code = "INVALID_ARGUMENT"


class ModelError(GuardError):
    """A model that is unknown, not installed or fails its checksum."""

    code = "FAILED_PRECONDITION"


class UnknownModel(ModelError):
    code = "INVALID_ARGUMENT"


class Cancelled(GuardError):
    """The caller went away or its deadline passed; work stopped early."""

    code = "CANCELLED"

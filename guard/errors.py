"""Typed errors. Each names the kind of thing that went wrong; transports map kinds to wire codes.

`Kind` is the whole vocabulary a transport needs: the gRPC adapter maps it to canonical status
codes (`guard.transports.grpc.status`), the HTTP adapter to HTTP statuses and OpenAI error
bodies (`guard.transports.http.errors`). Nothing here knows a wire format.
"""
from __future__ import annotations

from enum import Enum


class Kind(str, Enum):
    """What went wrong, in the caller's terms."""

    bad_request = "bad_request"  # a request the client must change (malformed, options out of range)
    bad_audio = "bad_audio"  # audio that cannot be decoded or used
    too_long = "too_long"  # audio over the duration cap
    bad_transcript = "bad_transcript"  # a transcript to verify that cannot be tokenized or placed
    unknown_model = "unknown_model"  # a model name this server does not serve
    model_broken = "model_broken"  # the server's own model install is unusable
    unauthenticated = "unauthenticated"  # missing or rejected credentials
    busy = "busy"  # every inference slot and queue place is taken; retry with backoff
    unavailable = "unavailable"  # loading, draining or shut down; retry (another replica)
    deadline = "deadline"  # the caller's deadline passed; work stopped
    cancelled = "cancelled"  # the caller went away; work stopped
    internal = "internal"  # a bug; logged with the request id


class GuardError(Exception):
    """Base class: `kind` says what went wrong, `str(err)` is a message a user can act on."""

    kind = Kind.internal

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class AudioError(GuardError):
    """Audio that cannot be decoded or is not usable (empty, corrupt, NaN, bad rate)."""

    kind = Kind.bad_audio


class AudioTooLong(AudioError):
    """Audio over the configured duration cap (declared or decoded)."""

    kind = Kind.too_long


class OptionsError(GuardError):
    """Request options out of their documented range."""

    kind = Kind.bad_request


class BadRequest(GuardError):
    """A request that does not parse or misses a required part (transport-independent wording)."""

    kind = Kind.bad_request


class TranscriptError(GuardError):
    """A transcript given for verification that cannot be tokenized or placed."""

    kind = Kind.bad_transcript


class ModelError(GuardError):
    """A model that is unknown, not installed or fails its checksum."""

    kind = Kind.model_broken


class UnknownModel(ModelError):
    kind = Kind.unknown_model


class Unauthenticated(GuardError):
    """Missing, malformed or unaccepted bearer token."""

    kind = Kind.unauthenticated


class Busy(GuardError):
    """Every inference slot and queue place is taken."""

    kind = Kind.busy


class Unavailable(GuardError):
    """The server cannot take the request now (model loading, shutting down); retry."""

    kind = Kind.unavailable


class DeadlineExceeded(GuardError):
    """The caller's deadline passed; work stopped."""

    kind = Kind.deadline


class Cancelled(GuardError):
    """The caller went away or its deadline passed; work stopped early."""

    kind = Kind.cancelled

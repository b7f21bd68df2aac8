"""One call as the serving layer sees it: request id, deadline and cancellation, outcome.

A transport builds a `Call` from its own wire (gRPC metadata and context, HTTP headers and
disconnect), and the serving layer does the rest with it: admission, cancelling work, metrics,
the request log line. `Outcome` is the transport-neutral result every transport maps to its codes.
"""
from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable
from enum import Enum

from guard.errors import Kind

REQUEST_ID_KEY = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class Outcome(str, Enum):
    """How a call ended: `ok` or the kind of error (`guard.errors.Kind`)."""

    ok = "ok"
    bad_request = Kind.bad_request.value
    bad_audio = Kind.bad_audio.value
    too_long = Kind.too_long.value
    bad_transcript = Kind.bad_transcript.value
    unknown_model = Kind.unknown_model.value
    model_broken = Kind.model_broken.value
    unauthenticated = Kind.unauthenticated.value
    busy = Kind.busy.value
    unavailable = Kind.unavailable.value
    deadline = Kind.deadline.value
    cancelled = Kind.cancelled.value
    internal = Kind.internal.value

    @classmethod
    def of(cls, kind: Kind) -> Outcome:
        return cls(kind.value)


def request_id(offered: str | None) -> str:
    """The client's request id when it is a sane token (letters, digits, `._:-`, <= 64), else a fresh one."""
    if isinstance(offered, str) and _CLIENT_REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex[:16]


def _always_active() -> bool:
    return True


@dataclasses.dataclass
class Call:
    """One request (or stream). `deadline` is a `time.monotonic()` instant or None."""

    method: str  # Transcribe | StreamTranscribe | Verify (the metric's `method` label)
    request_id: str
    hard_stop: threading.Event
    deadline: float | None = None
    is_active: Callable[[], bool] = _always_active  # False once the client went away
    started: float = dataclasses.field(default_factory=time.monotonic)
    queued: float = 0.0
    inference: float = 0.0  # seconds inside pipeline work (holding a slot): the in-process cost
    ticket: object | None = None  # the admission place while the call holds one
    outcome: Outcome | None = None
    message: str = ""

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0

    def cancelled(self) -> bool:
        """True once work for this call should stop: shutdown, client gone, or deadline passed."""
        return self.hard_stop.is_set() or not self.is_active() or self.expired()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def processing(self) -> float:
        """Seconds since receipt, less the time spent waiting for an inference slot."""
        return self.elapsed() - self.queued

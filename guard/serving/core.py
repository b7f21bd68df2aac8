"""The serving core every transport shares: one Guard, one admission pool, one way to run a call.

`Serving` owns the loaded pipeline (loading it in the background while transports already
listen), admission, the hard-stop switch of a drain, and the steps of a call: `begin` (request
id, deadline, cancellation), `admit` (a place, or busy/unavailable), `infer` (an inference slot
around pipeline work), `finish` (outcome, metrics, one log line). `unary` strings them together
for Transcribe and Verify whatever the transport. Errors become an `Outcome` and a message here;
each transport maps outcomes to its own status codes. Nothing here imports a transport.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import ValidationError

from guard.config import Settings
from guard.errors import Busy, Cancelled, GuardError, Kind, Unavailable
from guard.results import GuardResult
from guard.serving.admission import Admission, Ticket
from guard.serving.call import Call, Outcome, request_id
from guard.serving.options import describe_validation

if TYPE_CHECKING:
    from guard.metrics import GuardMetrics
    from guard.pipeline import Guard

log = logging.getLogger(__name__)
T = TypeVar("T")
HARD_STOP_WAIT_S = 10.0  # after the grace period: how long cancelled calls get to unwind

# The canonical (google.rpc.Code) name each outcome is counted under in
# `whisper_guard_requests_total{code}`: one vocabulary for every transport, so the alerts and the
# dashboard read the same series whichever front end a call came through.
CANONICAL_CODE = {
    Outcome.ok: "OK",
    Outcome.bad_request: "INVALID_ARGUMENT",
    Outcome.bad_audio: "INVALID_ARGUMENT",
    Outcome.too_long: "OUT_OF_RANGE",
    Outcome.bad_transcript: "INVALID_ARGUMENT",
    Outcome.unknown_model: "INVALID_ARGUMENT",
    Outcome.model_broken: "FAILED_PRECONDITION",
    Outcome.unauthenticated: "UNAUTHENTICATED",
    Outcome.busy: "RESOURCE_EXHAUSTED",
    Outcome.unavailable: "UNAVAILABLE",
    Outcome.deadline: "DEADLINE_EXCEEDED",
    Outcome.cancelled: "CANCELLED",
    Outcome.internal: "INTERNAL",
    Outcome.upstream_failed: "UNAVAILABLE",
    Outcome.upstream_timeout: "DEADLINE_EXCEEDED",
}


class Serving:
    """One per process: shared by the gRPC and HTTP transports."""

    def __init__(self, settings: Settings, metrics: GuardMetrics | None = None):
        self.settings = settings
        self.metrics = metrics
        self.admission = Admission(settings.max_concurrent, settings.max_queued, metrics)
        self.guard: Guard | None = None
        self.load_error: str | None = None
        self.loaded = threading.Event()  # set once loading ended, either way
        self.hard_stop = threading.Event()  # set when the drain grace period is over
        self._listeners: list[Callable[[bool], None]] = []
        self._serving = False  # what every listener (gRPC health, metrics) has last been told
        self._started = False
        self._lock = threading.Lock()
        self._announce_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Model loaded and not draining: what /readyz and gRPC health report. It turns true only
        after every listener has been told (so a client that sees /readyz 200 also sees gRPC
        SERVING), and false before any listener is told."""
        return self._serving and not self.admission.closed

    def on_serving(self, listener: Callable[[bool], None]) -> None:
        """`listener(True)` when the guard starts serving, `listener(False)` when it stops."""
        with self._announce_lock:
            self._listeners.append(listener)
            listener(self.ready)

    def _announce(self, serving: bool) -> None:
        with self._announce_lock:
            if serving and self.admission.closed:
                return  # closed while loading: stays NOT_SERVING
            if not serving:
                self._serving = False
            if self.metrics:
                self.metrics.set_serving(serving)
            for listener in self._listeners:
                listener(serving)
            if serving:
                self._serving = True

    def start(self, guard=None, load: Callable[[Settings], object] | None = None) -> None:
        """Serve `guard`, or load one in the background (`load(settings)`, default `Guard`). Once."""
        with self._lock:
            if self._started:
                return
            self._started = True
        if guard is not None:
            self._ready(guard)
        else:
            threading.Thread(target=self._load, args=(load,), name="guard-model-load", daemon=True).start()

    def _load(self, load) -> None:
        t0 = time.monotonic()
        try:
            if load is None:
                from guard.pipeline import Guard

                fallback = self.metrics.fallback if self.metrics else None
                load = lambda settings: Guard(settings, on_fallback=fallback)  # noqa: E731
            guard = load(self.settings)
        except Exception as e:  # noqa: BLE001 - reported on health, in the log and to callers
            self.load_error = f"{type(e).__name__}: {e}"
            # a GuardError (missing package, checksum mismatch, bad calibration) says what to do in
            # one line; anything else is a bug and gets its traceback
            log.error("cannot serve: the model failed to load: %s", e if isinstance(e, GuardError)
                      else self.load_error, exc_info=not isinstance(e, GuardError))
            self.loaded.set()
            return
        log.info("model loaded in %.1f s", time.monotonic() - t0)
        self._ready(guard)

    def _ready(self, guard) -> None:
        # A server answers Verify: its text normaliser (which reads its own data files) loads with
        # the model, so that no request opens a file (tests/test_security.py). The CLI's `transcribe`
        # never imports it (tests/test_startup.py).
        from guard import verify_features  # noqa: F401

        self.guard = guard
        if self.metrics:
            from importlib import metadata

            try:
                from guard import DISTRIBUTION

                version = metadata.version(DISTRIBUTION)
            except metadata.PackageNotFoundError:
                version = "dev"
            self.metrics.set_model_info(list(guard.model_names), guard.device, version)
        if not self.admission.closed:
            self._announce(True)
        log.info("SERVING models %s on %s", ", ".join(guard.model_names), guard.device)
        self.loaded.set()

    def close(self) -> None:
        """Refuse new calls from now on (health and readiness turn false); calls in flight go on."""
        self.admission.close()
        self._announce(False)

    def drain(self, grace: float | None = None) -> bool:
        """Close, let calls in flight finish within `grace` s (default `grace_seconds`), then cancel
        the rest. True if none had to be cancelled."""
        grace = self.settings.grace_seconds if grace is None else grace
        self.close()
        log.info("draining: health NOT_SERVING, new calls refused, %d in flight get up to %.1f s",
                 self.admission.admitted, grace)
        clean = self.admission.wait_idle(grace)
        if not clean:
            log.warning("grace period over with %d calls in flight; cancelling them", self.admission.admitted)
            self.hard_stop.set()
            self.admission.wait_idle(HARD_STOP_WAIT_S)
        return clean

    def stop(self) -> None:
        """Close and cancel everything in flight now."""
        self.close()
        self.hard_stop.set()

    # ---- one call ------------------------------------------------------------------------
    def begin(self, method: str, *, offered_id: str | None = None, timeout: float | None = None,
              is_active: Callable[[], bool] | None = None) -> Call:
        """A new call; `timeout` is the seconds the caller waits (None: no deadline)."""
        call = Call(method, request_id(offered_id), self.hard_stop)
        if timeout is not None:
            call.deadline = call.started + timeout
        if is_active is not None:
            call.is_active = is_active
        return call

    def admit(self, call: Call) -> Ticket:
        """A place for the call (kept in `call.ticket`), or Unavailable / Busy at once."""
        shutting_down = Unavailable("the server is shutting down and takes no new requests; retry (another replica)")
        if self.admission.closed:
            raise shutting_down
        if self.guard is None:
            if self.load_error:
                raise Unavailable(f"the model failed to load ({self.load_error}); the server cannot serve")
            raise Unavailable("the model is still loading; retry in a few seconds (health reports SERVING when ready)")
        ticket = self.admission.admit()
        if ticket is None:
            if self.admission.closed:
                raise shutting_down
            if self.metrics:
                self.metrics.rejected(call.method)
            raise Busy(f"server busy: {self.admission.max_concurrent} requests running and "
                       f"{self.admission.max_queued} waiting; retry with backoff")
        call.ticket = ticket
        return ticket

    def release(self, call: Call) -> None:
        if call.ticket is not None:
            call.ticket.release()
            call.ticket = None

    def infer(self, call: Call, work: Callable[[Guard, Callable[[], bool]], T]) -> T:
        """`work(guard, cancel)` while holding an inference slot (waiting for one in turn)."""
        with call.ticket.slot(call.cancelled) as waited:
            call.queued += waited
            guard = self.guard
            if guard is None:  # pragma: no cover - admit checked
                raise Unavailable("the model is not loaded")
            t0 = time.monotonic()
            try:
                return work(guard, call.cancelled)
            finally:
                call.inference += time.monotonic() - t0

    def unary(self, call: Call, work: Callable[[Call], tuple[GuardResult, T]],
              check: Callable[[], None] | None = None) -> T | None:
        """The one unary path: `check()` (before admission), admit, `work(call)` -> (result,
        response), release, finish. Returns the response, or None with `call.outcome` and
        `call.message` saying what went wrong."""
        result = response = None
        try:
            if check is not None:
                check()
            self.admit(call)
            try:
                result, response = work(call)
            finally:
                self.release(call)
            call.outcome = Outcome.ok
        except Exception as e:  # noqa: BLE001 - every error becomes an outcome
            self.fail(call, e, finish=False)
        finally:
            self.finish(call, result)
        return response if call.outcome is Outcome.ok else None

    def fail(self, call: Call, err: Exception, *, finish: bool = True) -> None:
        """Record `err` as the call's outcome (and finish the call unless told not to)."""
        call.outcome, call.message = self.classify(err, call)
        if finish:
            self.finish(call, None)

    def classify(self, err: Exception, call: Call) -> tuple[Outcome, str]:
        """(outcome, message) for an exception; internal ones are logged with the request id."""
        if isinstance(err, Cancelled):
            if self.hard_stop.is_set():
                return Outcome.unavailable, "the server shut down before this request finished; retry"
            if call.expired():
                return Outcome.deadline, (f"deadline exceeded after {call.elapsed():.1f} s; "
                                          "work stopped; allow a longer deadline for this much audio")
            return Outcome.cancelled, "the call was cancelled; work stopped"
        if isinstance(err, ValidationError):  # pipeline-side validation of options
            return Outcome.bad_request, describe_validation(err, "options")
        if isinstance(err, GuardError) and err.kind is not Kind.internal:
            return Outcome.of(err.kind), err.message
        log.error("request %s (%s) failed with an unexpected error", call.request_id, call.method, exc_info=err)
        return Outcome.internal, (f"internal error (request id {call.request_id}); the server logged the details "
                                  "under this id; the server is still serving")

    def finish(self, call: Call, result: GuardResult | None) -> None:
        """Metrics and the request's log line."""
        outcome = call.outcome or Outcome.internal
        code = CANONICAL_CODE[outcome]
        seconds = call.elapsed()
        if self.metrics:
            self.metrics.observe_request(call.method, code, seconds)
            if result is not None:
                self.metrics.observe_result(result, call.method)
        if result is not None:
            log.info("request %s %s %s: %.2f s audio, %d segments, %.2f s (%.2f s queued)", call.request_id,
                     call.method, code, result.audio_seconds, len(result.segments), seconds, call.queued)
        else:
            log.info("request %s %s %s after %.2f s", call.request_id, call.method, code, seconds)

    def refused(self, method: str, outcome: Outcome) -> None:
        """A call refused at the door (e.g. unauthenticated): counted, not run."""
        if self.metrics:
            self.metrics.observe_request(method, CANONICAL_CODE[outcome], 0.0)

"""Admission: one pool of places and inference slots for every transport.

`max_concurrent` inference slots plus `max_queued` waiting places; FIFO; no waiting beyond. An
open stream holds a place for its lifetime and a slot only while its audio is being decoded.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from guard.errors import Cancelled


class Admission:
    """`max_concurrent` inference slots plus `max_queued` waiting places; FIFO; no waiting beyond.

    `admit()` hands out a Ticket (a place) or None at once. A ticket's `slot(cancel)` waits for
    an inference slot in arrival order and gives up when `cancel()` turns true, so a cancelled
    or expired call leaves the queue instead of holding it.
    """

    def __init__(self, max_concurrent: int, max_queued: int, metrics=None):
        self.max_concurrent, self.max_queued = max_concurrent, max_queued
        self.metrics = metrics
        self.closed = False
        self._cond = threading.Condition()
        self._admitted = 0
        self._running = 0
        self._waiting: deque[object] = deque()
        if metrics:
            metrics.set_limits(max_concurrent, max_queued)

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def admit(self) -> Ticket | None:
        """A place, or None when all are taken or admission is closed (draining)."""
        with self._cond:
            if self.closed or self._admitted >= self.max_concurrent + self.max_queued:
                return None
            self._admitted += 1
            return Ticket(self)

    def close(self) -> None:
        with self._cond:
            self.closed = True

    def wait_idle(self, timeout: float) -> bool:
        """Until no ticket is out (True) or `timeout` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._admitted == 0, timeout=max(0.0, timeout))

    def _acquire(self, cancel: Callable[[], bool]) -> float:
        t0 = time.monotonic()
        me = object()
        with self._cond:
            self._waiting.append(me)
            self._gauges()
            try:
                while self._running >= self.max_concurrent or self._waiting[0] is not me:
                    if cancel():
                        raise Cancelled("the call ended while waiting for an inference slot")
                    self._cond.wait(0.05)
                self._running += 1
            finally:
                self._waiting.remove(me)
                self._gauges()
                self._cond.notify_all()
        return time.monotonic() - t0

    def _release(self) -> None:
        with self._cond:
            self._running -= 1
            self._gauges()
            self._cond.notify_all()

    def _leave(self) -> None:
        with self._cond:
            self._admitted -= 1
            self._cond.notify_all()

    def _gauges(self) -> None:
        if self.metrics:
            self.metrics.in_flight.set(self._running)
            self.metrics.queued.set(len(self._waiting))


class Ticket:
    """One admitted request (or open stream)."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._released = False

    @contextlib.contextmanager
    def slot(self, cancel: Callable[[], bool]) -> Iterator[float]:
        """Hold an inference slot for the block; yields the seconds spent waiting for it."""
        waited = self._admission._acquire(cancel)
        try:
            yield waited
        finally:
            self._admission._release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._leave()

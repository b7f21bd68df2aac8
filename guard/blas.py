"""numpy's BLAS thread count: one thread for the signature, the library default for log-mel.

The signature (Gram matrices, eigenvalues) runs on the analysis thread while CTranslate2 decodes
the next window. On OpenBLAS's default thread pool its workers spin-wait beside CTranslate2's
threads: on a loaded 2-core host the signature burned ~5 s of CPU on 130 s of audio that a single
thread does in ~0.1 s (benchmarks/results/whole-*.md). The count cannot simply be set to one for
the process: faster-whisper's log-mel goes through the same BLAS, and one thread instead of the
default changes its summation order enough to flip borderline transcripts, i.e. the guard would no
longer transcribe what plain faster-whisper does.

So both sides take one lock: `single_threaded()` (the signature) limits BLAS to one thread while it
holds it, `default_threads()` (log-mel) runs with the library default while it holds it. A log-mel
never sees the limit; at worst it waits for one segment's signature (milliseconds).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


def prepare() -> None:
    """Inspect the loaded BLAS libraries now (~15 ms), at load, rather than on the first signature."""
    _get_controller()


@contextmanager
def single_threaded() -> Iterator[None]:
    with _lock, _get_controller().limit(limits=1, user_api="blas"):
        yield


@contextmanager
def default_threads() -> Iterator[None]:
    with _lock:
        yield

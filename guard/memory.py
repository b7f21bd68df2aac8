"""Hand freed heap memory back to the OS after each analysed window (glibc's `malloc_trim`).

A window's probe and signature allocate tens of MB (the probe's outputs, ONNX Runtime's arena
chunks, the signature's [layers, heads, rows, frames] arrays) on the analysis thread while
CTranslate2 decodes the next window on another. glibc keeps what they free in its per-thread
heaps: glibc raises its mmap threshold to the size of each large block freed, so later blocks of
that size come from the heaps, whose free pages it returns only from the top. Over a long file
the process's resident set crept up by ~150 MB that nothing used, and the next window's peak
stacked on top of it (tiny.en, 211 s: resting RSS 368 -> 521 MB; with a trim after each window
it stays at 357-396 MB). `malloc_trim(0)` releases the free pages of every heap, in a few ms.

The price is that the next window faults those pages in again: over the 211 s file (tiny.en) ~90k
more minor page faults, +0.6 s of system CPU on ~18 s (+3.5%), for a peak 582-594 -> 560-569 MB.
`Settings.release_memory` (WHISPER_GUARD_RELEASE_MEMORY=false) turns it off.

`limit_arenas` caps how many of those heaps glibc keeps (`mallopt(M_ARENA_MAX)`, what the
environment variable MALLOC_ARENA_MAX does). glibc gives threads up to 8 per core: CTranslate2's,
ONNX Runtime's, the analysis thread and the loader each allocate in their own, and each heap keeps
its own free pages. The CLI and `serve` cap them at `Settings.malloc_arenas` (2) before any of
those threads starts: tiny.en over 211 s, peak RSS median 529 -> 512 MB (4 interleaved runs each).

Not glibc (musl, macOS): `release()` and `limit_arenas()` do nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_ARENA_MAX = -8  # glibc's malloc.h


@functools.cache
def _glibc(name: str, *argtypes):
    """The C library's function `name` (returning int), looked up once; None where the C library
    cannot be loaded or has none (not glibc)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = list(argtypes), ctypes.c_int
    return function


def limit_arenas(n: int) -> bool:
    """Cap glibc's malloc heaps at `n` for the threads that start from now on.

    Does nothing (False) for n = 0, where the C library is not glibc, and where MALLOC_ARENA_MAX is
    set in the environment: the operator's value stands."""
    if n <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _glibc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and mallopt(M_ARENA_MAX, n) == 1


def release() -> bool:
    """Return the heaps' free pages to the OS; False where the C library cannot."""
    trim = _glibc("malloc_trim", ctypes.c_size_t)
    if trim is None:
        return False
    trim(0)
    return True

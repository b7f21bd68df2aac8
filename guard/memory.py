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

Not glibc (musl, macOS): `release()` does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, looked up once; None where the C library has none."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release() -> bool:
    """Return the heaps' free pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

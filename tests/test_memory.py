"""Memory of a long run: freed heap pages go back to the OS, the vocabulary statistics are per row
(same values whatever else shares the pass), and a start maps the cached graph without onnx."""
from __future__ import annotations

import platform
import threading
from pathlib import Path

import numpy as np
import pytest

from guard import memory
from guard.asr import DecodeState
from guard.probe.decoder_graph import LOGIT_OUTPUTS

FIXTURES = Path(__file__).parent / "fixtures"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _churn() -> list[np.ndarray]:
    """What an analysis thread does to glibc: a large block freed (its mmap threshold rises to that
    size), then many 1 MB blocks from the thread's heap, freed but for the last one."""
    big = np.ones(32 << 18, np.float32)
    del big
    blocks = [np.ones(1 << 18, np.float32) for _ in range(200)]
    return blocks[-1:]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_release_hands_freed_heap_pages_back():
    kept = []
    for _ in range(2):  # the second round runs with the raised threshold
        t = threading.Thread(target=lambda: kept.append(_churn()))
        t.start()
        t.join()
    before = _rss_mb()
    assert memory.release() is True
    assert before - _rss_mb() > 100, "~200 MB freed in the thread's heap should be returned"


def test_vocabulary_statistics_do_not_depend_on_the_rows_asked(guard, load_audio):
    """Rows asked alone, a few, or all at once get the same log-prob, entropy and argmax: the
    statistics are per row, whatever else shares the pass."""
    bundle = guard.bundle("tiny.en")
    audio = load_audio(FIXTURES / "speech-agent-alreadyon.flac")
    window = next(iter(bundle.transcriber.windows(audio, DecodeState(), bundle.transcriber.options(), None, final=True)))
    seq = window.prompt + window.tokens
    rows_all = np.arange(len(seq) - 1)
    targets_all = np.asarray(seq, np.int64)[rows_all + 1]
    assert len(rows_all) > 8
    full = bundle.probe.run(seq, window.encoder_output, rows_all, targets_all)
    for size in (1, 2, 7, len(rows_all) - 1):
        rows = rows_all[-size:]
        part = bundle.probe.run(seq, window.encoder_output, rows, targets_all[-size:], pattern_rows=rows)
        for name in (LOGIT_OUTPUTS[0], LOGIT_OUTPUTS[2]):
            np.testing.assert_allclose(part[name], full[name][-size:], rtol=1e-6, atol=1e-6, err_msg=f"{name} {size}")
        np.testing.assert_array_equal(part[LOGIT_OUTPUTS[1]], full[LOGIT_OUTPUTS[1]][-size:])
        assert part[LOGIT_OUTPUTS[0]].shape == (size,)


_HEAPS = """
import ctypes, os, sys, tempfile, threading
from guard import memory
capped = memory.limit_arenas(int(sys.argv[1]))
held, ready, go = [], threading.Barrier(7), threading.Event()
def work():  # six threads allocating at once, each keeping its block
    ready.wait()
    held.append(ctypes.create_string_buffer(1 << 16))
    go.wait()
threads = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in threads]
ready.wait()
libc = ctypes.CDLL("libc.so.6")
libc.fdopen.restype = ctypes.c_void_p
with tempfile.TemporaryFile() as f:
    stream = libc.fdopen(os.dup(f.fileno()), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    f.seek(0)
    heaps = f.read().count(b"<heap nr=")
go.set()
[t.join() for t in threads]
print(capped, heaps)
"""


def _heaps(limit: int, env: dict | None = None) -> tuple[str, int]:
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _HEAPS, str(limit)], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {}))
    capped, heaps = out.stdout.split()
    return capped, int(heaps)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_limit_arenas_caps_the_heaps_threads_get():
    """glibc reports one heap per arena (malloc_info): capped at 2, six busy threads share two."""
    assert _heaps(2) == ("True", 2)
    assert _heaps(0)[1] > 2  # 0: glibc's default, a heap per contending thread
    assert _heaps(2, {"MALLOC_ARENA_MAX": "3"})[0] == "False"  # the operator's environment stands
    assert memory.limit_arenas(0) is False


def test_the_cli_caps_the_arenas_from_settings(monkeypatch):
    import argparse

    from guard import cli

    calls = []
    monkeypatch.setattr(memory, "limit_arenas", calls.append)
    monkeypatch.setenv("WHISPER_GUARD_MALLOC_ARENAS", "3")
    cli.settings_from(argparse.Namespace(model=None, device=None, compute_type=None, calibration=None))
    assert calls == [3]


def test_serve_caps_the_arenas_before_it_serves(monkeypatch):
    import argparse

    from guard import server

    calls = []
    monkeypatch.setattr(memory, "limit_arenas", lambda n: calls.append(("limit", n)))
    monkeypatch.setattr(server, "serve", lambda settings: calls.append(("serve", settings.malloc_arenas)) or 0)
    parser = argparse.ArgumentParser()
    server.add_serve_arguments(parser)
    assert server.run_serve(parser.parse_args([])) == 0
    assert calls == [("limit", 2), ("serve", 2)]

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

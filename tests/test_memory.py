"""Memory of a long run: freed heap pages go back to the OS, the vocabulary statistics come in row
chunks (same values whatever the number of rows), and a start maps the cached graph without onnx."""
from __future__ import annotations

import platform
import threading
from pathlib import Path

import numpy as np
import pytest

from guard import memory
from guard.asr import DecodeState
from guard.probe.decoder_graph import LOGIT_OUTPUTS, VOCAB_CHUNK

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


def test_vocabulary_statistics_do_not_depend_on_the_chunking(guard, load_audio):
    """Rows asked alone, in fewer rows than a chunk, exactly a chunk, one more, or all at once get
    the same log-prob, entropy and argmax (padding rows never leak into real ones)."""
    bundle = guard.bundle("tiny.en")
    audio = load_audio(FIXTURES / "speech-agent-alreadyon.flac")
    window = next(iter(bundle.transcriber.windows(audio, DecodeState(), bundle.transcriber.options(), None, final=True)))
    seq = window.prompt + window.tokens
    n = len(seq) - 1
    reps = max(1, -(-(2 * VOCAB_CHUNK + 5) // n))  # enough rows to span three chunks
    tokens = (seq[:-1] * reps)[: min(bundle.probe.dims["max_positions"] - 1, n * reps)] + [seq[-1]]
    rows_all = np.arange(len(tokens) - 1)
    targets_all = np.asarray(tokens, np.int64)[rows_all + 1]
    assert len(rows_all) > 2 * VOCAB_CHUNK
    full = bundle.probe.run(tokens, window.encoder_output, rows_all, targets_all)
    for size in (1, VOCAB_CHUNK - 1, VOCAB_CHUNK, VOCAB_CHUNK + 1):
        rows = rows_all[-size:]
        part = bundle.probe.run(tokens, window.encoder_output, rows, targets_all[-size:], pattern_rows=rows)
        for name in (LOGIT_OUTPUTS[0], LOGIT_OUTPUTS[2]):
            np.testing.assert_allclose(part[name], full[name][-size:], rtol=1e-6, atol=1e-6, err_msg=f"{name} {size}")
        np.testing.assert_array_equal(part[LOGIT_OUTPUTS[1]], full[LOGIT_OUTPUTS[1]][-size:])
        assert part[LOGIT_OUTPUTS[0]].shape == (size,)

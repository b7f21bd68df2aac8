"""CTranslate2's threads and workers never add up to more OpenMP threads than the process has CPUs.

More would make libgomp stop spin-waiting at its barriers, and every decode in the process would
slow down (`guard.asr.ct2_layout`). The layout rule is checked for machines this host is not; the
real model checks that the loaded CTranslate2 got the layout, and that requests beyond its
workers wait in its queue and come out as they would alone.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SPEECH

from guard.asr import CT2_DEFAULT_THREADS, DecodeState, Transcriber, ct2_layout
from guard.audio import decode_file
from guard.config import Settings
from guard.models import resolve


@pytest.mark.parametrize("cpus, max_concurrent, expected", [
    (1, 2, (1, 1)),
    (2, 1, (2, 1)),
    (2, 2, (2, 1)),  # the 2-core sidecar: one worker of 2 threads, not two teams on two cores
    (4, 2, (4, 1)),
    (8, 2, (4, 2)),
    (8, 4, (4, 2)),
    (64, 4, (4, 4)),
])
def test_cpu_layout_keeps_openmp_threads_within_the_cpus(cpus, max_concurrent, expected):
    threads, workers = ct2_layout("cpu", 0, max_concurrent, cpus=cpus)
    assert (threads, workers) == expected
    assert threads * workers <= cpus
    assert threads <= CT2_DEFAULT_THREADS and 1 <= workers <= max_concurrent


def test_explicit_threads_and_gpu_keep_what_was_asked():
    assert ct2_layout("cpu", 3, 2, cpus=2) == (3, 2)  # the user's choice (the guard logs a warning)
    assert ct2_layout("cuda", 0, 3, cpus=2) == (0, 3)


def test_the_loaded_model_gets_the_layout_and_queues_requests_beyond_it():
    settings = Settings(model="tiny.en", max_concurrent=2)
    transcriber = Transcriber(resolve("tiny.en", cache=settings.model_cache), settings)
    threads, workers = ct2_layout("cpu", 0, 2)
    assert (transcriber.cpu_threads, transcriber.workers) == (threads, workers)
    assert transcriber.ct2.num_workers == workers
    assert threads * workers <= len(os.sched_getaffinity(0))

    audio = decode_file(SPEECH, max_seconds=60)

    def text() -> str:
        windows = transcriber.windows(audio, DecodeState(), transcriber.options(), "en", final=True, offset=0)
        return "".join(seg.text for w in windows for seg in w.segments)

    alone = text()
    with ThreadPoolExecutor(3) as pool:  # more requests than workers: they wait, none is lost or mixed
        together = list(pool.map(lambda _: text(), range(3)))
    assert alone.strip() and together == [alone] * 3

"""The probe graph cache: built once into the model cache, mapped after; corrupt caches are rebuilt."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from guard.models import resolve
from guard.probe import decoder_graph, graph_cache
from guard.probe.runner import Probe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return resolve("tiny.en", cache=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def window():
    rng = np.random.default_rng(7)
    tokens = np.concatenate([[50257, 50362], rng.integers(0, 50256, 60)])
    rows = np.arange(1, len(tokens) - 1)
    return tokens, rng.standard_normal((1500, 384)).astype(np.float32), rows, tokens[2:], np.arange(10, 50)


@pytest.fixture(scope="module")
def reference(tiny, window):
    """The in-memory graph's outputs (no cache)."""
    return Probe(tiny.path / "model.bin").run(*window).tensors


def _same(cache, reference):
    assert set(cache.tensors) == set(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(cache.tensors[name], value, err_msg=name)  # same graph: bit for bit


def _builds(monkeypatch) -> list:
    calls = []
    real = decoder_graph.build
    monkeypatch.setattr(decoder_graph, "build", lambda w: calls.append(1) or real(w))
    return calls


def test_graph_is_built_once_then_mapped_with_identical_outputs(tiny, window, reference, tmp_path, monkeypatch):
    builds = _builds(monkeypatch)
    first = Probe(tiny.path / "model.bin", cache=tmp_path, model_sha=tiny.sha256)
    assert len(builds) == 1 and first.source is not None and first.describe()["weights"] == "mapped from the graph cache"
    _same(first.run(*window), reference)
    second = Probe(tiny.path / "model.bin", cache=tmp_path, model_sha=tiny.sha256)
    assert len(builds) == 1 and second.source == first.source  # no rebuild
    _same(second.run(*window), reference)
    root = tmp_path / "probe-graphs"
    assert [p.name for p in root.iterdir()] == [graph_cache.graph_key(tiny.sha256)]  # no temp dirs left
    assert graph_cache.graph_key("0" * 64) != graph_cache.graph_key(tiny.sha256)


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-onnx", "garbage-meta", "no-meta", "flip-weights"])
def test_a_corrupt_cache_is_rebuilt(tiny, window, reference, tmp_path, monkeypatch, caplog, damage):
    Probe(tiny.path / "model.bin", cache=tmp_path, model_sha=tiny.sha256)
    target = tmp_path / "probe-graphs" / graph_cache.graph_key(tiny.sha256)
    weights = target / graph_cache.WEIGHTS_NAME
    if damage == "truncate-weights":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif damage == "garbage-onnx":
        (target / graph_cache.ONNX_NAME).write_bytes(b"\x08garbage")
    elif damage == "garbage-meta":
        (target / graph_cache.META_NAME).write_text("{not json")
    elif damage == "no-meta":
        (target / graph_cache.META_NAME).unlink()
    else:  # same size, bytes changed in place by a copy: the weights' sha256 is checked once
        data = bytearray(weights.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 64])
        weights.unlink()
        weights.write_bytes(bytes(data))  # a new inode: the recorded identity no longer matches
    builds = _builds(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="guard.probe.graph_cache"):
        probe = Probe(tiny.path / "model.bin", cache=tmp_path, model_sha=tiny.sha256)
    assert len(builds) == 1 and "rebuilding" in caplog.text
    _same(probe.run(*window), reference)
    assert graph_cache._check(target) is not None
    assert [p.name for p in (tmp_path / "probe-graphs").iterdir()] == [target.name]


def test_a_copied_cache_is_verified_once_and_reused(tiny, tmp_path, monkeypatch):
    Probe(tiny.path / "model.bin", cache=tmp_path, model_sha=tiny.sha256)
    target = tmp_path / "probe-graphs" / graph_cache.graph_key(tiny.sha256)
    weights = target / graph_cache.WEIGHTS_NAME
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data)  # as `cp -r` would: same bytes, new inode and mtime
    builds = _builds(monkeypatch)
    Probe(tiny.path / "model.bin", cache=tmp_path, model_sha=tiny.sha256)
    assert builds == []
    meta = json.loads((target / graph_cache.META_NAME).read_text())
    assert meta["files"][graph_cache.WEIGHTS_NAME]["identity"] == graph_cache._identity(weights)


def test_an_unusable_cache_builds_in_memory(tiny, window, reference, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="guard.probe.runner"):
        probe = Probe(tiny.path / "model.bin", cache=blocker, model_sha=tiny.sha256)
    assert probe.source is None and "building the graph in memory" in caplog.text
    _same(probe.run(*window), reference)

"""The probe's decoder graph, built once per model and kept in the model cache.

Building the graph dequantizes every decoder weight to float32 (0.4 s and a transient ~2x the
weights for tiny.en) and the process then held that float32 copy beside ONNX Runtime's packed
one. Written once as `probe.onnx` + `probe.weights` (raw float32, each tensor at a 64 KiB-aligned
offset), ONNX Runtime maps the weights file itself, packs what its kernels pack and releases the
mapping: later starts skip the build, and the process holds one copy of the weights.

    <model_cache>/probe-graphs/<key>/{probe.onnx, probe.weights, meta.json}

`key` covers the model.bin sha256, `GRAPH_FORMAT`, the source of `decoder_graph` (any change to
the builder is a new graph) and the onnx / onnxruntime versions. Writes are atomic (a temp
directory renamed into place). A directory that fails its checks (meta unreadable, probe.onnx's
sha256, probe.weights' size or, after a copy, its sha256) is rebuilt; a cache that cannot be
written means the graph is built in memory, as before, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from guard.hash_cache import sha256_file
from guard.probe import ct2_reader, decoder_graph

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1
ALIGN = 1 << 16  # ONNX Runtime maps external data whose offset is a multiple of the allocation granularity
ONNX_NAME, WEIGHTS_NAME, META_NAME = "probe.onnx", "probe.weights", "meta.json"


@dataclass(frozen=True)
class CachedGraph:
    onnx_path: Path
    dims: dict


def graph_key(model_sha: str) -> str:
    from importlib.metadata import version  # onnx itself is imported only to build (see decoder_graph)

    import onnxruntime as ort

    source = Path(decoder_graph.__file__).read_bytes()
    parts = [model_sha, str(GRAPH_FORMAT), hashlib.sha256(source).hexdigest(), version("onnx"), ort.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def _check(target: Path) -> dict | None:
    """meta.json of a complete, unchanged graph directory, or None."""
    try:
        meta = json.loads((target / META_NAME).read_text())
        files = meta["files"]
        if sha256_file(target / ONNX_NAME) != files[ONNX_NAME]["sha256"]:
            return None
        weights = target / WEIGHTS_NAME
        if os.stat(weights).st_size != files[WEIGHTS_NAME]["size"]:
            return None
        if _identity(weights) != files[WEIGHTS_NAME].get("identity"):  # copied or rewritten: read it once
            if sha256_file(weights) != files[WEIGHTS_NAME]["sha256"]:
                return None
            files[WEIGHTS_NAME]["identity"] = _identity(weights)
            _write_json(target / META_NAME, meta)
        if not isinstance(meta.get("dims"), dict):
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, value: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".meta-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(graph: decoder_graph.DecoderGraph, directory: Path, key: str) -> None:
    """probe.onnx (weights by reference into probe.weights) + probe.weights + meta.json."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    h = hashlib.sha256()
    offset = 0
    with open(directory / WEIGHTS_NAME, "wb") as f:
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            value = graph.initializers[tensor.name]
            pad = (-offset) % ALIGN
            f.write(b"\0" * pad)
            h.update(b"\0" * pad)
            offset += pad
            data = memoryview(value.reshape(-1)).cast("B")  # contiguous, as stored, no copy
            f.write(data)
            h.update(data)
            del tensor.external_data[:]
            for k, v in (("location", WEIGHTS_NAME), ("offset", str(offset)), ("length", str(value.nbytes))):
                tensor.external_data.add(key=k, value=v)
            offset += value.nbytes
        f.flush()
        os.fsync(f.fileno())
    (directory / ONNX_NAME).write_bytes(model.SerializeToString())
    files = {ONNX_NAME: {"sha256": sha256_file(directory / ONNX_NAME)},
             WEIGHTS_NAME: {"size": offset, "sha256": h.hexdigest(), "identity": _identity(directory / WEIGHTS_NAME)}}
    _write_json(directory / META_NAME, {"key": key, "format": GRAPH_FORMAT, "dims": graph.dims, "files": files})


def _replace_dir(tmp: Path, target: Path) -> None:
    if target.exists() and _check(target) is not None:  # another process wrote it meanwhile: keep theirs
        return
    if target.exists():  # a stale or corrupt one: move it aside, then swap
        trash = Path(tempfile.mkdtemp(prefix=".stale-", dir=target.parent))
        try:
            os.replace(target, trash / "old")
        except OSError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if _check(target) is None:  # lost a race to a good writer: fine; else a real failure
            raise


def load_or_build(model_bin: Path, model_sha: str, cache: Path) -> CachedGraph:
    """The cached graph for this model.bin (built and written on the first call)."""
    root = Path(cache) / "probe-graphs"
    key = graph_key(model_sha)
    target = root / key
    meta = _check(target)
    if meta is not None:
        return CachedGraph(target / ONNX_NAME, meta["dims"])
    if target.exists():
        log.warning("probe graph cache %s failed its checks; rebuilding it", target)
    graph = decoder_graph.build(ct2_reader.read(model_bin))
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".probe-", dir=root))
    try:
        _write(graph, tmp, key)
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = _check(target)
    if meta is None:
        raise OSError(f"the probe graph written to {target} does not read back")
    return CachedGraph(target / ONNX_NAME, meta["dims"])


def invalidate(onnx_path: Path) -> None:
    """Drop a cached graph that ONNX Runtime refused (the next start rebuilds it)."""
    shutil.rmtree(Path(onnx_path).parent, ignore_errors=True)

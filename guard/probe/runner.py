"""Run the teacher-forced decoder graph on ONNX Runtime: one pass per 30 s window.

The result is an activation cache keyed by stable names (see `decoder_graph`), in the spirit of
TransformerLens' `ActivationCache`: analysis code asks for `decoder.layers.2.cross_attn.pattern`,
never for a tensor position.

Outputs are bound (IO binding) straight into two preallocated arrays, patterns [L, H, K, F] and
sublayer outputs [L, K, d]: the per-layer names are views into them, so nothing is stacked or
copied after the run. On CUDA the inputs are copied to the device by ONNX Runtime and the outputs
land in the same host arrays (the signature is computed on the host).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from guard.errors import ModelError
from guard.probe import ct2_reader
from guard.probe.decoder_graph import LOGIT_OUTPUTS, Embedding, build, out_name, pattern_name

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

# On CPU the probe of window k runs while CTranslate2 decodes window k+1 (guard.pipeline), so a
# second intra-op thread mostly competes with CTranslate2 for the same cores. Measured on a 2-core
# host (paired runs): 1 thread vs ONNX Runtime's default was 0.90x wall time on 150 s of audio for
# tiny.en and 0.95x for base, 0.97-1.04x on single-window clips. `probe_threads` overrides it.
CPU_DEFAULT_THREADS = 1


@dataclass
class ProbeCache:
    """Named activations of one teacher-forced window pass.

    `tensors[pattern_name(l)]` is [H, K, F] and `tensors[out_name(l)]` is [K, d], where the K rows
    are the token positions in `pattern_rows` (None: every position 0..K-1). `rows` are the
    positions the `logits.*` statistics refer to.
    """

    tensors: dict[str, np.ndarray]
    n_layers: int
    rows: np.ndarray
    pattern_rows: np.ndarray | None = None
    stacked_patterns: np.ndarray | None = field(default=None, repr=False)  # [L, H, K, F]
    stacked_outs: np.ndarray | None = field(default=None, repr=False)  # [L, K, d]
    n_positions: int | None = None  # tokens fed (T)
    _full: dict = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def _stacked(self) -> tuple[np.ndarray, np.ndarray]:
        if self.stacked_patterns is None:
            self.stacked_patterns = np.stack([self.tensors[pattern_name(l)] for l in range(self.n_layers)])
        if self.stacked_outs is None:
            self.stacked_outs = np.stack([self.tensors[out_name(l)] for l in range(self.n_layers)])
        return self.stacked_patterns, self.stacked_outs

    @property
    def complete(self) -> bool:
        """Every position was probed (row k is position k)."""
        return self.pattern_rows is None

    def patterns(self) -> np.ndarray:
        """[layers, heads, positions, frames], indexed by token position (computed once, then cached).

        After a pass restricted to `pattern_rows`, positions outside them are zeros; `select` reads
        only the probed rows without building the full array.
        """
        patterns, _ = self._stacked()
        return patterns if self.complete else self._scatter(patterns, axis=2)

    def outs(self) -> np.ndarray:
        """[layers, positions, d_model], indexed by token position (see `patterns`)."""
        _, outs = self._stacked()
        return outs if self.complete else self._scatter(outs, axis=1)

    def select(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(patterns [L, H, n, F], outs [L, n, d]) at the given token positions."""
        patterns, outs = self._stacked()
        index = self.index_of(positions)
        return patterns[:, :, index, :], outs[:, index, :]

    def index_of(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self.complete:
            return positions
        index = np.searchsorted(self.pattern_rows, positions)
        index = np.minimum(index, len(self.pattern_rows) - 1)
        if len(positions) and not np.array_equal(self.pattern_rows[index], positions):
            raise ValueError("asked for positions the probe pass did not keep")
        return index

    def _scatter(self, stacked: np.ndarray, axis: int) -> np.ndarray:
        full = self._full.get(axis)
        if full is None:
            shape = list(stacked.shape)
            shape[axis] = self.n_positions or int(self.pattern_rows[-1]) + 1
            full = np.zeros(shape, stacked.dtype)
            index = [slice(None)] * stacked.ndim
            index[axis] = self.pattern_rows
            full[tuple(index)] = stacked
            self._full[axis] = full
        return full


class Probe:
    """The decoder of one model, built once from its model.bin, on the best available provider."""

    def __init__(self, model_bin: str | Path, *, device: str = "cpu", threads: int = 0,
                 on_fallback: Callable[[str, str], None] | None = None, cache: Path | None = None,
                 model_sha: str | None = None):
        """`cache`: the model cache, where the graph is built once and mapped by ONNX Runtime on
        later starts (`graph_cache`); None builds it in memory."""
        import onnxruntime as ort  # here, not at import: a start imports it while CTranslate2 loads (guard.pipeline)

        if not threads and device != "cuda":
            threads = CPU_DEFAULT_THREADS
        providers: list = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}))
            else:
                log.warning("probe: onnxruntime has no CUDA provider (install onnxruntime-gpu); running on CPU")
                if on_fallback:
                    on_fallback("onnxruntime", "cuda_unavailable")
        self._arrays: dict[str, np.ndarray] = {}
        self.session = self.dims = self.source = None
        if cache is not None:
            self._open_cached(Path(model_bin), cache, model_sha, threads, providers)
        if self.session is None:
            graph = build(ct2_reader.read(model_bin))
            self.dims = graph.dims
            options = session_options(threads)
            # ONNX Runtime reads the weights from these arrays (no proto copy, no serialised copy):
            # arrays and values must live as long as the session.
            self._arrays = graph.initializers
            self._weights = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in self._arrays.items()}
            options.add_external_initializers(list(self._weights), list(self._weights.values()))
            self.session = ort.InferenceSession(graph.model.SerializeToString(), options, providers=providers)
            del graph
        # rows read from the file as needed; the mapping read here is closed when `__init__` returns
        self.embedding = Embedding(ct2_reader.read(model_bin), path=model_bin)
        self.providers = self.session.get_providers()
        if providers[0] != "CPUExecutionProvider" and self.providers[0] != "CUDAExecutionProvider":
            log.warning("probe: the CUDA provider failed to start; running on CPU")
            if on_fallback:
                on_fallback("onnxruntime", "provider_error")
        self.n_layers = self.dims["layers"]
        self.names = [n for l in range(self.n_layers) for n in (pattern_name(l), out_name(l))] + list(LOGIT_OUTPUTS)
        self.threads = threads
        self.runs = 0
        # hand the arena's free chunks back after each run: one long window (many tokens) would
        # otherwise keep its activations' peak for the life of the process
        self._run_options = ort.RunOptions()
        if self.providers[0] == "CPUExecutionProvider":
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _open_cached(self, model_bin: Path, cache: Path, model_sha: str | None, threads: int,
                     providers: list) -> None:
        """The session from the graph cache; on any failure the caller builds in memory."""
        import onnxruntime as ort

        from guard.hash_cache import sha256_cached
        from guard.probe import graph_cache

        try:
            cached = graph_cache.load_or_build(model_bin, model_sha or sha256_cached(model_bin, cache), cache)
        except OSError as e:  # unwritable or full cache: a ModelError (bad model.bin) propagates
            log.warning("probe: graph cache under %s unusable (%s); building the graph in memory", cache, e)
            return
        try:
            self.session = ort.InferenceSession(str(cached.onnx_path), session_options(threads), providers=providers)
            self.dims = cached.dims
            self.source = str(cached.onnx_path)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types; the build below is the fallback
            log.warning("probe: cached graph %s did not load (%s); dropped, building in memory", cached.onnx_path, e)
            graph_cache.invalidate(cached.onnx_path)

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] == "CUDAExecutionProvider"

    def describe(self) -> dict:
        """Provider and session settings, for logs and benchmark reports."""
        return {"providers": self.providers, "intra_op_threads": self.threads or "onnxruntime default",
                "graph_optimization": "ORT_ENABLE_ALL", "io_binding": True,
                "weights": "mapped from the graph cache" if not self._arrays else "external initializers"}

    def run(self, tokens: list[int] | np.ndarray, encoder_output: np.ndarray, rows: np.ndarray,
            targets: np.ndarray, pattern_rows: np.ndarray | None = None) -> ProbeCache:
        """Teacher-force `tokens` over one window's encoder output.

        `rows[i]` is an input position whose next-token distribution is scored against `targets[i]`.
        `pattern_rows` (sorted positions) limits the attention patterns and sublayer outputs to
        the rows that will be read; None keeps every position. The logit rows are always kept.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.int64)
        n = len(tokens)
        if n == 0:
            raise ModelError("the probe needs at least one token")
        if len(rows) != len(targets) or (len(rows) and (rows.min() < 0 or rows.max() >= n)):
            raise ModelError("logit rows must be positions of the fed tokens, one target each")
        if len(targets) and (targets.min() < 0 or targets.max() >= self.dims["vocab"]):
            raise ModelError(f"target token ids must be in 0..{self.dims['vocab'] - 1}")
        asked = len(rows)
        if asked == 0:  # ONNX Runtime mis-shapes ArgMax over zero rows: score row 0, return nothing
            rows, targets = np.zeros(1, np.int64), np.zeros(1, np.int64)
        if pattern_rows is None:
            keep = np.arange(n, dtype=np.int64)
        else:
            keep = np.union1d(np.asarray(pattern_rows, dtype=np.int64), rows)
            if keep[0] < 0 or keep[-1] >= n:
                raise ModelError("pattern rows must be positions of the fed tokens")
        logit_index = np.searchsorted(keep, rows)
        L, H, F, d = self.n_layers, self.dims["heads"], self.dims["frames"], self.dims["d_model"]
        K, R = len(keep), len(rows)
        patterns = np.empty((L, H, K, F), np.float32)
        outs = np.empty((L, K, d), np.float32)
        stats = {LOGIT_OUTPUTS[0]: np.empty(R, np.float32), LOGIT_OUTPUTS[1]: np.empty(R, np.int64),
                 LOGIT_OUTPUTS[2]: np.empty(R, np.float32)}
        io = self.session.io_binding()
        feeds = {"embeddings": self.embedding(tokens),
                 "encoder_output": np.ascontiguousarray(encoder_output, dtype=np.float32),
                 "keep_rows": keep, "logit_index": logit_index.astype(np.int64), "targets": targets}
        if feeds["encoder_output"].shape != (F, d):
            raise ModelError(f"encoder output must be [{F}, {d}], got {list(feeds['encoder_output'].shape)}")
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)
        tensors: dict[str, np.ndarray] = {}
        for l in range(L):
            tensors[pattern_name(l)], tensors[out_name(l)] = patterns[l], outs[l]
        tensors.update(stats)
        for name, value in tensors.items():
            io.bind_output(name, "cpu", 0, value.dtype, list(value.shape), value.ctypes.data)
        self.session.run_with_iobinding(io, self._run_options)
        self.runs += 1
        if asked == 0:
            rows = rows[:0]
            for name in LOGIT_OUTPUTS:
                tensors[name] = tensors[name][:0]
        return ProbeCache(tensors, L, rows, None if pattern_rows is None else keep, patterns, outs, n)


def session_options(threads: int) -> ort.SessionOptions:
    """Full graph optimisation, sequential execution, no memory pattern; `threads` intra-op threads
    (0 = one per core).

    Intra-op threads do not spin while waiting: the probe shares the cores with CTranslate2 and
    with concurrent requests, and a spinning pool measurably slowed both on a busy 2-core host.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # No memory pattern: ONNX Runtime plans (and keeps) one block per input-shape combination, and
    # every window has its own token count. Measured (tiny.en, T=221, K=R=166, one thread): peak RSS
    # 571 -> 416 MB, CPU per run 249 -> 238 ms; the arena still reuses the freed tensors.
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options

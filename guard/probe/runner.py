"""Run the teacher-forced decoder graph on ONNX Runtime: one pass per 30 s window.

The result is an activation cache keyed by stable names (see `decoder_graph`), in the spirit of
TransformerLens' `ActivationCache`: analysis code asks for `decoder.layers.2.cross_attn.pattern`,
never for a tensor position.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from guard.probe import ct2_reader
from guard.probe.decoder_graph import LOGIT_OUTPUTS, build, out_name, pattern_name

log = logging.getLogger(__name__)


@dataclass
class ProbeCache:
    """Named activations of one teacher-forced window pass."""

    tensors: dict[str, np.ndarray]
    n_layers: int
    rows: np.ndarray  # token positions the logits statistics refer to

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def patterns(self) -> np.ndarray:
        """[layers, heads, tokens, frames]"""
        return np.stack([self.tensors[pattern_name(l)] for l in range(self.n_layers)])

    def outs(self) -> np.ndarray:
        """[layers, tokens, d_model]"""
        return np.stack([self.tensors[out_name(l)] for l in range(self.n_layers)])


class Probe:
    """The decoder of one model, built once from its model.bin, on the best available provider."""

    def __init__(self, model_bin: str | Path, *, device: str = "cpu", threads: int = 0,
                 on_fallback: Callable[[str, str], None] | None = None):
        weights = ct2_reader.read(model_bin)
        graph, self.dims = build(weights)
        del weights
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("probe: onnxruntime has no CUDA provider (install onnxruntime-gpu); running on CPU")
                if on_fallback:
                    on_fallback("onnxruntime", "cuda_unavailable")
        self.session = ort.InferenceSession(graph.SerializeToString(), options, providers=providers)
        self.providers = self.session.get_providers()
        if providers[0] == "CUDAExecutionProvider" and self.providers[0] != providers[0] and on_fallback:
            log.warning("probe: the CUDA provider failed to start; running on CPU")
            on_fallback("onnxruntime", "provider_error")
        self.n_layers = self.dims["layers"]
        self.names = [n for l in range(self.n_layers) for n in (pattern_name(l), out_name(l))] + list(LOGIT_OUTPUTS)
        self.runs = 0

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] == "CUDAExecutionProvider"

    def run(self, tokens: list[int] | np.ndarray, encoder_output: np.ndarray, rows: np.ndarray,
            targets: np.ndarray) -> ProbeCache:
        """Teacher-force `tokens` over one window's encoder output.

        `rows[i]` is an input position whose next-token distribution is scored against `targets[i]`.
        """
        feeds = {"tokens": np.asarray(tokens, dtype=np.int64),
                 "encoder_output": np.ascontiguousarray(encoder_output, dtype=np.float32),
                 "logit_rows": np.asarray(rows, dtype=np.int64), "targets": np.asarray(targets, dtype=np.int64)}
        values = self.session.run(self.names, feeds)
        self.runs += 1
        return ProbeCache(dict(zip(self.names, values)), self.n_layers, feeds["logit_rows"])

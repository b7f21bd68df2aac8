"""Build the Whisper decoder as an ONNX graph from CTranslate2 weights, for teacher forcing.

The graph takes a window's token embeddings (prompt + emitted, looked up by `Embedding`) and its
encoder output, and returns with stable TransformerLens-style names what the probe reads:

- `decoder.layers.{l}.cross_attn.pattern`  [heads, K, frames]  softmax attention weights
- `decoder.layers.{l}.cross_attn.out`      [K, d_model]        sublayer output (before the residual add)
- `logits.target_logprob`, `logits.argmax`, `logits.entropy`  [R]  next-token statistics

where the K `keep_rows` are the token positions anything is read at (all positions by default) and
the R `logit_index` entries pick which of them get the vocabulary projection.

Layout (CTranslate2 WhisperSpec): pre-norm blocks, self-attention with fused QKV `linear_0` and
output `linear_1`; cross-attention `attention/linear_0` = Q, `linear_1` = fused KV, `linear_2` =
output; FFN `linear_0` -> exact GELU -> `linear_1`; final layer norm; projection tied to the token
embedding; LayerNorm epsilon 1e-5; learned position embeddings added to token embeddings.

Cost-driven choices (see the perf section of the README; each keeps the outputs of the plain
graph, `tests/test_perf_equivalence.py` holds that reference and pins the agreement):

- cross-attention keys and values are projected straight into the layout their matmuls read
  (`W_k @ encoder_output^T` is already [heads, d_head, frames]): no split, no per-layer transposes;
- the 1/sqrt(d_head) scale is folded into the query weights, exact when it is a power of two
  (d_head = 64 in every Whisper model), else applied to the scores as before;
- the last layer runs its queries, cross-attention and FFN only on the kept rows: the prompt's
  rows there feed nothing that is read;
- the vocabulary projection (the costliest matmul) runs on the R logit rows only, against the
  token embedding itself (Gemm with transB): one copy of the largest weight, not two, kept as the
  model stores it (float16: half the bytes, cast exactly a chunk at a time); and in a Loop over
  chunks of VOCAB_CHUNK vocabulary entries, combined as a log-sum-exp, so one chunk's
  [rows, VOCAB_CHUNK] tensors are alive at a time, never a [rows, vocab] one;
- the last layer's softmax is itself the pattern output, written into the caller's buffer;
- weights are not embedded in the proto: `DecoderGraph.initializers` hands them to ONNX Runtime
  as external initializers, so loading holds one float32 copy instead of four;
- every layer's matrices but the two query projections (whose folded scale is exact only in
  float32) stay float16 as the model stores them, and are cast to float32 when their layer runs:
  the Cast reads a Slice whose start is a zero computed from the layer's input (`late`), so ONNX
  Runtime can neither fold it into a float32 initializer nor run every layer's Cast at the start of
  the pass. One layer's float32 matrices are alive at a time instead of all of them packed for the
  session's life. Measured (211 s file, 3 interleaved pairs): peak RSS base 584-594 -> 550-556 MB,
  the probe's time per window unchanged (82-95 ms either way on base).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.errors import ModelError
from guard.probe.ct2_reader import ModelBin, to_float32

OPSET = 17
EPS = 1e-5
N_FRAMES = 1500  # encoder frames of a 30 s window (every Whisper model)
VOCAB_CHUNK = 2048  # vocabulary entries per statistics chunk (see `_vocab_statistics`)


# onnx is imported on the first build, not with this module: the runner needs only the names
# below, and a start that maps a cached graph never builds one (onnx + protobuf + ml_dtypes cost
# ~0.1 s of CPU and ~15 MB a start).
onnx = TensorProto = helper = numpy_helper = None


def _import_onnx() -> None:
    global onnx, TensorProto, helper, numpy_helper
    if onnx is None:
        import onnx as _onnx
        from onnx import numpy_helper as _numpy_helper

        onnx, TensorProto, helper, numpy_helper = _onnx, _onnx.TensorProto, _onnx.helper, _numpy_helper


def pattern_name(layer: int) -> str:
    return f"decoder.layers.{layer}.cross_attn.pattern"


def out_name(layer: int) -> str:
    return f"decoder.layers.{layer}.cross_attn.out"


LOGIT_OUTPUTS = ("logits.target_logprob", "logits.argmax", "logits.entropy")
INPUTS = ("embeddings", "encoder_output", "keep_rows", "logit_index", "targets")


class Embedding:
    """Token + position embedding rows, read from model.bin as the graph would.

    Only the rows a window uses are converted to float32 (exact for float16/bfloat16 storage;
    quantized tables dequantize per row as `ModelBin.float32` does), so the table is not held twice.

    With `path` (the probe's case) the rows are read from the file with `os.pread` and nothing of
    model.bin stays mapped. A mapping kept ~25 MB of base's file resident for the life of the
    process: parsing walks every variable's header (17.5 MB resident after `parse` alone, since each
    page fault maps the pages around it too), and each looked-up row added more. The graph holds its
    own copy of the table for the projection. Measured on base, the 211 s file, 3 interleaved pairs:
    peak RSS 613-624 -> 584-594 MB.
    """

    def __init__(self, weights: ModelBin, path: str | Path | None = None):
        key = weights.aliases.get("decoder/embeddings/weight", "decoder/embeddings/weight")
        table = weights.variables[key]
        self.positions = weights.float32("decoder/position_encodings/encodings")
        self.vocab, self.d_model = table.shape
        self._dtype = weights.dtypes[key]
        self._scale = weights.float32(weights.scale_name(key)).reshape(-1) if self._dtype in (1, 2) else None
        if path is None or table.flags.owndata:  # not the file's own bytes (a converted table): keep it
            self._table, self._file = table, None
        else:
            self._table, self._file = None, open(path, "rb")  # noqa: SIM115 - held for the probe's life
            self._offset, self._stored = weights.offsets[key], table.dtype

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) > len(self.positions):
            raise ModelError(f"{len(tokens)} tokens exceed the decoder's {len(self.positions)} positions")
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab):
            raise ModelError(f"token id out of range 0..{self.vocab - 1}")
        return self._rows_float32(tokens) + self.positions[: len(tokens)]

    def _stored_rows(self, index: np.ndarray) -> np.ndarray:
        if self._file is None:
            return self._table[index]
        unique, inverse = np.unique(index, return_inverse=True)
        row_bytes = self.d_model * self._stored.itemsize
        fd = self._file.fileno()
        raw = b"".join(os.pread(fd, row_bytes, self._offset + int(t) * row_bytes) for t in unique)
        if len(raw) != len(unique) * row_bytes:
            raise ModelError("model.bin changed or was truncated while loaded")
        return np.frombuffer(raw, self._stored).reshape(len(unique), self.d_model)[inverse.reshape(-1)]

    def _rows_float32(self, index: np.ndarray) -> np.ndarray:
        scale = self._scale
        if scale is not None and scale.size > 1:
            scale = scale[index]  # the rows' own scales
        return to_float32(self._stored_rows(index), self._dtype, scale)


def _external(name: str, value: np.ndarray) -> onnx.TensorProto:
    """An initializer whose data ONNX Runtime receives by reference (`add_external_initializers`)."""
    _import_onnx()
    t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype), dims=value.shape,
                         data_location=onnx.TensorProto.EXTERNAL)
    for key, val in (("location", "guard-probe-weights"), ("offset", "0"), ("length", str(value.nbytes))):
        t.external_data.add(key=key, value=val)
    return t


@dataclass
class DecoderGraph:
    model: onnx.ModelProto  # no large weights inside: see `initializers`
    initializers: dict[str, np.ndarray]  # name -> weight (float32, or float16 as stored), by reference
    dims: dict
    embedding: Embedding

    def self_contained(self) -> onnx.ModelProto:
        """A copy of the model with every weight embedded (for export and inspection)."""
        _import_onnx()
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        embedded = [t for t in model.graph.initializer if t.name not in self.initializers]
        del model.graph.initializer[:]
        model.graph.initializer.extend(embedded)
        model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in self.initializers.items())
        return model


class _Builder:
    def __init__(self, weights: ModelBin):
        _import_onnx()
        self.w = weights
        self.nodes: list[onnx.NodeProto] = []
        self.small: list[onnx.TensorProto] = []  # constants embedded in the proto
        self.large: dict[str, np.ndarray] = {}  # weights passed by reference
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        value = np.ascontiguousarray(value)
        if value.size >= 1024:
            self.large[name] = value
        else:
            self.small.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs) -> str:
        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        outs = [out] if n_out == 1 else [f"{out}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"n{self._n}_{op_type}", **attrs))
        return out

    def weight(self, name: str) -> np.ndarray:
        if not self.w.has(name):
            raise ModelError(f"model.bin has no variable {name}: not a CTranslate2 Whisper model")
        return self.w.float32(name)

    def bias(self, name: str, size: int) -> np.ndarray:
        return self.w.float32(name) if self.w.has(name) else np.zeros(size, np.float32)

    def as_stored(self, name: str) -> np.ndarray:
        """A float16 weight as the model stores it (the graph's Cast to float32 is exact); any
        other storage as float32."""
        if not self.w.has(name):
            raise ModelError(f"model.bin has no variable {name}: not a CTranslate2 Whisper model")
        key = self.w.aliases.get(name, name)
        return self.w.variables[key] if self.w.dtypes[key] == 4 else self.weight(name)

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, tag: str, late: str | None = None) -> str:
        """x @ w.T + b, with w stored [out, in] as CTranslate2 does. With `late` (a runtime [0]) a
        float16 w stays float16 in the graph and is cast to float32 only when its layer runs."""
        w_t = self.late_weight(f"{tag}.W", w.T, late)
        return self.op("Add", [self.op("MatMul", [x, w_t]), self.const(f"{tag}.b", b)])

    def late_weight(self, name: str, w: np.ndarray, late: str | None) -> str:
        """A matrix input: float32 as a plain initializer; float16 (with `late`) kept float16 and cast
        in the graph once `late` exists (see the module doc: the cast is exact)."""
        if late is None or w.dtype != np.float16:
            return self.const(name, w.astype(np.float32, copy=False))
        w16 = self.const(name, np.ascontiguousarray(w))
        view = self.op("Slice", [w16, late, "c.int64_max", "c.zero1"])  # starts depend on the layer's input
        return self.op("Cast", [view], to=TensorProto.FLOAT)

    def layer_norm(self, x: str, prefix: str, tag: str) -> str:
        g = self.const(f"{tag}.ln.g", self.weight(f"{prefix}/gamma"))
        b = self.const(f"{tag}.ln.b", self.weight(f"{prefix}/beta"))
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=EPS)

    def shape(self, name: str, dims: list[int]) -> str:
        return self.const(f"shape.{name}", np.array(dims, np.int64))


def _vocab_statistics(b: _Builder, picked: str, targets: str, proj: str, bias: str | None, vocab: int) -> None:
    """The `logits.*` outputs of the R picked rows [R, d], VOCAB_CHUNK vocabulary entries at a time.

    A Loop over column chunks of the vocabulary: each iteration slices VOCAB_CHUNK rows of the
    projection (the token embedding, stored as the model stores it: float16 weights stay float16,
    and the Cast to float32 is exact), multiplies the R rows against them (Gemm with transB) and
    reduces the [R, VOCAB_CHUNK] logits to per-row partial statistics: the chunk's maximum m and
    its first argmax, s = sum exp(l - m), a = sum exp(l - m) (l - m), and the target's logit where
    the target falls in the chunk. After the loop the partials combine exactly as a log-sum-exp
    does: with M = max m, S = sum s e^(m - M), A = sum e^(m - M) (a + s (m - M)),
        log p(target) = (l_target - M) - log S,   entropy = log S - A / S,
    and the argmax is the first maximum's, in the first chunk holding M (ArgMax's tie rule).

    So neither a float32 copy of the projection (the largest weight: 80 MB in float32 for tiny.en,
    held as 40 MB of float16) nor a [rows, vocab] tensor is ever alive: one chunk's float32
    weights and [R, VOCAB_CHUNK] logits are. Summing 2,048 entries at a time is also closer to the
    exact value than one float32 LogSoftmax over the whole row: on real tiny.en windows 2e-6 nats
    from the float64 log-softmax of the same logits, against 6e-5 (`tests/test_perf_equivalence.py`).
    """
    zero1, one = "c.zero1", "c.one"  # [0] and [1], made by `build` before this
    chunk = b.const("c.vocab_chunk", np.array([VOCAB_CHUNK], np.int64))
    trips = b.const("c.vocab_trips", np.array(-(-vocab // VOCAB_CHUNK), np.int64))
    neg_inf = b.const("c.neg_inf", np.array(-np.inf, np.float32))
    tgt = b.op("Unsqueeze", [targets, one])  # [R, 1]

    outer = b.nodes
    b.nodes = []
    lo = b.op("Mul", [b.op("Unsqueeze", ["chunk_index", zero1]), chunk])  # [1]
    hi = b.op("Add", [lo, chunk])  # past the vocabulary on the last chunk: Slice clamps it
    w = b.op("Slice", [proj, lo, hi, zero1])  # [C, d] as stored
    if b.large[proj].dtype != np.float32:
        w = b.op("Cast", [w], to=TensorProto.FLOAT)
    logits = b.op("Gemm", [picked, w], transB=1)  # [R, C]
    if bias is not None:
        logits = b.op("Add", [logits, b.op("Slice", [bias, lo, hi, zero1])])
    m = b.op("ReduceMax", [logits], axes=[1], keepdims=1)  # opset 17: axes an attribute  # [R, 1]
    shifted = b.op("Sub", [logits, m])
    e = b.op("Exp", [shifted])
    s = b.op("ReduceSum", [e, one], keepdims=0)  # [R]
    a = b.op("ReduceSum", [b.op("Mul", [e, shifted]), one], keepdims=0)  # [R]
    idx = b.op("Add", [b.op("ArgMax", [logits], axis=1, keepdims=0), lo])  # [R], vocabulary ids
    width = b.op("Shape", [logits], start=1, end=2)  # [1] = this chunk's columns
    local = b.op("Sub", [tgt, lo])  # [R, 1]
    inside = b.op("And", [b.op("GreaterOrEqual", [local, zero1]), b.op("Less", [local, width])])
    picked_t = b.op("GatherElements", [logits, b.op("Where", [inside, local, zero1])], axis=1)
    t_logit = b.op("Squeeze", [b.op("Where", [inside, picked_t, neg_inf]), one])  # [R], -inf off the chunk
    b.op("Squeeze", [m, one], name="chunk_max")
    b.op("Identity", ["chunk_cond_in"], name="chunk_cond_out")
    body = helper.make_graph(
        b.nodes, "vocab_chunk",
        inputs=[helper.make_tensor_value_info("chunk_index", TensorProto.INT64, []),
                helper.make_tensor_value_info("chunk_cond_in", TensorProto.BOOL, [])],
        outputs=[helper.make_tensor_value_info("chunk_cond_out", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["R"]) for n in ("chunk_max", s, a, t_logit)]
        + [helper.make_tensor_value_info(idx, TensorProto.INT64, ["R"])])
    b.nodes = outer
    parts = b.op("Loop", [trips, ""], "vocab_chunks", n_out=5, body=body)  # each [chunks, R]
    m_all, s_all, a_all, t_all, idx_all = (f"{parts}_{i}" for i in range(5))
    big_m = b.op("ReduceMax", [m_all], axes=[0], keepdims=1)  # [1, R]
    dm = b.op("Sub", [m_all, big_m])  # [chunks, R], <= 0
    r = b.op("Exp", [dm])
    big_s = b.op("ReduceSum", [b.op("Mul", [s_all, r]), zero1], keepdims=0)  # [R]
    big_a = b.op("ReduceSum", [b.op("Mul", [r, b.op("Add", [a_all, b.op("Mul", [s_all, dm])])]), zero1], keepdims=0)
    log_s = b.op("Log", [big_s])
    t_logit = b.op("ReduceMax", [t_all], axes=[0], keepdims=0)  # the one chunk that holds each target
    b.op("Sub", [b.op("Sub", [t_logit, b.op("Squeeze", [big_m, zero1])]), log_s], name=LOGIT_OUTPUTS[0])
    first = b.op("ArgMax", [m_all], axis=0, keepdims=1)  # [1, R]: the first chunk holding M
    b.op("Squeeze", [b.op("GatherElements", [idx_all, first], axis=0), zero1], name=LOGIT_OUTPUTS[1])
    b.op("Sub", [log_s, b.op("Div", [big_a, big_s])], name=LOGIT_OUTPUTS[2])


def build(weights: ModelBin) -> DecoderGraph:
    """The decoder graph, its weights and dimensions (`layers`, `heads`, `d_model`, `vocab`, `max_positions`)."""
    if "Whisper" not in weights.spec:
        raise ModelError(f"model.bin holds a {weights.spec}, not a Whisper model")
    b = _Builder(weights)
    if not weights.has("decoder/embeddings/weight"):
        raise ModelError("model.bin has no variable decoder/embeddings/weight: not a CTranslate2 Whisper model")
    vocab, d_model = weights.get("decoder/embeddings/weight").shape
    n_pos = b.weight("decoder/position_encodings/encodings").shape[0]
    n_heads = int(np.asarray(weights.get("decoder/num_heads")).reshape(-1)[0]) if weights.has("decoder/num_heads") \
        else max(1, d_model // 64)
    n_layers = 0
    while weights.has(f"decoder/layer_{n_layers}/attention/linear_0/weight"):
        n_layers += 1
    if n_layers == 0:
        raise ModelError("model.bin has no decoder layers")
    d_head = d_model // n_heads
    scale = np.float32(1.0 / math.sqrt(d_head))
    fold = math.frexp(float(scale))[0] == 0.5  # a power of two: folding into the weights is exact
    scale_c = None if fold else b.const("c.scale", np.array(scale, np.float32))

    x = "embeddings"  # [T, d] token + position embeddings
    enc = "encoder_output"  # [F, d]
    keep, logit_index, targets = "keep_rows", "logit_index", "targets"
    one = b.const("c.one", np.array([1], np.int64))
    t_len = b.op("Shape", [x], start=0, end=1)  # [1] = T
    causal = np.triu(np.full((n_pos, n_pos), -1e9, np.float32), k=1)
    mask_full = b.const("c.causal", causal)
    zero2 = b.const("c.zero2", np.array([0, 0], np.int64))
    axes01 = b.const("c.axes01", np.array([0, 1], np.int64))
    mask = b.op("Slice", [mask_full, zero2, b.op("Concat", [t_len, t_len], axis=0), axes01])  # [T, T]
    zero1 = b.const("c.zero1", np.array([0], np.int64))
    b.const("c.int64_max", np.array([np.iinfo(np.int64).max], np.int64))
    mask_keep = b.op("Gather", [b.op("Slice", [mask_full, zero1, t_len, one]), keep], axis=0)  # [K, T]
    enc_t = b.op("Transpose", [enc], perm=[1, 0])  # [d, F], shared by every layer's K/V projection
    heads_first = b.shape("heads_first", [0, n_heads, d_head])
    merge = b.shape("merge", [0, d_model])
    by_head = b.shape("by_head", [n_heads, d_head, N_FRAMES])

    def to_heads(t: str) -> str:  # [T, d] -> [H, T, dh]
        return b.op("Transpose", [b.op("Reshape", [t, heads_first])], perm=[1, 0, 2])

    def to_heads_t(t: str) -> str:  # [T, d] -> [H, dh, T]
        return b.op("Transpose", [b.op("Reshape", [t, heads_first])], perm=[1, 2, 0])

    def merge_heads(t: str) -> str:  # [H, T, dh] -> [T, d]
        return b.op("Reshape", [b.op("Transpose", [t], perm=[1, 0, 2]), merge])

    outputs = []
    for layer in range(n_layers):
        p = f"decoder/layer_{layer}"
        tag = f"decoder.layers.{layer}"
        last = layer == n_layers - 1
        late = b.op("Mul", [b.op("Shape", [x], start=0, end=1), zero1])  # [0], known only once x is
        # self-attention (causal); on the last layer only the kept rows ask queries
        h = b.layer_norm(x, f"{p}/self_attention/layer_norm", f"{tag}.self_attn")
        w_qkv16 = b.as_stored(f"{p}/self_attention/linear_0/weight")
        w_qkv = w_qkv16.astype(np.float32)
        b_qkv = b.bias(f"{p}/self_attention/linear_0/bias", w_qkv.shape[0])
        w_q, w_kv = w_qkv[:d_model], w_qkv16[d_model:]
        b_q, b_kv = b_qkv[:d_model], b_qkv[d_model:]
        if fold:
            w_q, b_q = w_q * scale, b_q * scale
        kv = b.linear(h, w_kv, b_kv, f"{tag}.self_attn.kv", late)
        b.op("Split", [kv, b.const(f"{tag}.split2", np.array([d_model, d_model], np.int64))], f"{tag}.self_kv",
             n_out=2, axis=-1)
        k, v = f"{tag}.self_kv_0", f"{tag}.self_kv_1"
        if last:
            h = b.op("Gather", [h, keep], axis=0)
            x = b.op("Gather", [x, keep], axis=0)
        q = b.linear(h, w_q, b_q, f"{tag}.self_attn.q")
        scores = b.op("MatMul", [to_heads(q), to_heads_t(k)])
        if not fold:
            scores = b.op("Mul", [scores, scale_c])
        scores = b.op("Add", [scores, mask_keep if last else mask])
        attn = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), to_heads(v)])
        w_o = b.as_stored(f"{p}/self_attention/linear_1/weight")
        x = b.op("Add", [x, b.linear(merge_heads(attn), w_o, b.bias(f"{p}/self_attention/linear_1/bias",
                                                                  d_model), f"{tag}.self_attn.o", late)])
        # cross-attention over the encoder output; K and V come out as [H, dh, F]
        h = b.layer_norm(x, f"{p}/attention/layer_norm", f"{tag}.cross_attn")
        w_cq = b.weight(f"{p}/attention/linear_0/weight")
        b_cq = b.bias(f"{p}/attention/linear_0/bias", d_model)
        if fold:
            w_cq, b_cq = w_cq * scale, b_cq * scale
        q = b.linear(h, w_cq, b_cq, f"{tag}.cross_attn.q")
        w_ckv = b.as_stored(f"{p}/attention/linear_1/weight")
        b_ckv = b.bias(f"{p}/attention/linear_1/bias", 2 * d_model)
        k_t = b.op("MatMul", [b.late_weight(f"{tag}.cross_attn.k.W", w_ckv[:d_model], late), enc_t])  # [d, F]
        if np.any(b_ckv[:d_model]):
            k_t = b.op("Add", [k_t, b.const(f"{tag}.cross_attn.k.b", b_ckv[:d_model, None])])
        v_t = b.op("MatMul", [b.late_weight(f"{tag}.cross_attn.v.W", w_ckv[d_model:], late), enc_t])
        if np.any(b_ckv[d_model:]):
            v_t = b.op("Add", [v_t, b.const(f"{tag}.cross_attn.v.b", b_ckv[d_model:, None])])
        scores = b.op("MatMul", [to_heads(q), b.op("Reshape", [k_t, by_head])])  # [H, T, F]
        if not fold:
            scores = b.op("Mul", [scores, scale_c])
        # the last layer's softmax writes straight into the caller's output buffer (no copy)
        pattern = b.op("Softmax", [scores], name=pattern_name(layer) if last else None, axis=-1)
        v_h = b.op("Transpose", [b.op("Reshape", [v_t, by_head])], perm=[0, 2, 1])  # fused into the matmul
        w_co = b.as_stored(f"{p}/attention/linear_2/weight")
        cross = b.linear(merge_heads(b.op("MatMul", [pattern, v_h])), w_co,
                         b.bias(f"{p}/attention/linear_2/bias", d_model), f"{tag}.cross_attn.o", late)
        if last:
            b.op("Identity", [cross], name=out_name(layer))
        else:
            b.op("Gather", [pattern, keep], name=pattern_name(layer), axis=1)
            b.op("Gather", [cross, keep], name=out_name(layer), axis=0)
        x = b.op("Add", [x, cross])
        outputs += [(pattern_name(layer), [n_heads, "K", N_FRAMES]), (out_name(layer), ["K", d_model])]
        # feed-forward with exact GELU
        h = b.layer_norm(x, f"{p}/ffn/layer_norm", f"{tag}.ffn")
        w_in = b.as_stored(f"{p}/ffn/linear_0/weight")
        u = b.linear(h, w_in, b.bias(f"{p}/ffn/linear_0/bias", w_in.shape[0]), f"{tag}.ffn.in", late)
        gelu = b.op("Mul", [b.op("Mul", [u, b.const(f"{tag}.half", np.array(0.5, np.float32))]),
                            b.op("Add", [b.op("Erf", [b.op("Mul", [u, b.const(f"{tag}.isqrt2", np.array(
                                1 / math.sqrt(2), np.float32))])]), b.const(f"{tag}.one", np.array(1.0, np.float32))])])
        w_out = b.as_stored(f"{p}/ffn/linear_1/weight")
        x = b.op("Add", [x, b.linear(gelu, w_out, b.bias(f"{p}/ffn/linear_1/bias", d_model), f"{tag}.ffn.out",
                                     late)])

    x = b.layer_norm(x, "decoder/layer_norm", "decoder.final")
    picked = b.op("Gather", [x, logit_index], axis=0)  # [R, d]
    tied = not weights.has("decoder/projection/weight") or \
        weights.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    proj = b.const("decoder.unembed.W", b.as_stored("decoder/embeddings/weight" if tied else "decoder/projection/weight"))
    bias = b.const("decoder.unembed.b", b.weight("decoder/projection/bias")) \
        if weights.has("decoder/projection/bias") else None
    _vocab_statistics(b, picked, targets, proj, bias, vocab)

    graph = helper.make_graph(
        b.nodes, "whisper_decoder_probe",
        inputs=[helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["T", d_model]),
                helper.make_tensor_value_info(enc, TensorProto.FLOAT, [N_FRAMES, d_model]),
                helper.make_tensor_value_info(keep, TensorProto.INT64, ["K"]),
                helper.make_tensor_value_info(logit_index, TensorProto.INT64, ["R"]),
                helper.make_tensor_value_info(targets, TensorProto.INT64, ["R"])],
        outputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs]
        + [helper.make_tensor_value_info(LOGIT_OUTPUTS[0], TensorProto.FLOAT, ["R"]),
           helper.make_tensor_value_info(LOGIT_OUTPUTS[1], TensorProto.INT64, ["R"]),
           helper.make_tensor_value_info(LOGIT_OUTPUTS[2], TensorProto.FLOAT, ["R"])],
        initializer=b.small + [_external(k, v) for k, v in b.large.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="whisper-guard")
    model.ir_version = 8
    dims = {"layers": n_layers, "heads": n_heads, "d_model": d_model, "vocab": vocab, "max_positions": n_pos,
            "frames": N_FRAMES}
    return DecoderGraph(model, b.large, dims, Embedding(weights))

"""Build the Whisper decoder as an ONNX graph from CTranslate2 weights, for teacher forcing.

The graph takes a window's tokens (prompt + emitted) and its encoder output and returns, with
stable TransformerLens-style names, what the probe reads:

- `decoder.layers.{l}.cross_attn.pattern`  [heads, tokens, frames]  softmax attention weights
- `decoder.layers.{l}.cross_attn.out`      [tokens, d_model]        sublayer output (before the residual add)
- `logits.target_logprob`, `logits.argmax`, `logits.entropy`  [rows]  next-token statistics, only for
  the rows asked for (the vocabulary projection is the costliest matmul; prompt rows skip it)

Layout (CTranslate2 WhisperSpec): pre-norm blocks, self-attention with fused QKV `linear_0` and
output `linear_1`; cross-attention `attention/linear_0` = Q, `linear_1` = fused KV, `linear_2` =
output; FFN `linear_0` -> exact GELU -> `linear_1`; final layer norm; projection tied to the token
embedding; LayerNorm epsilon 1e-5; learned position embeddings added to token embeddings.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from guard.errors import ModelError
from guard.probe.ct2_reader import ModelBin

OPSET = 17
EPS = 1e-5


def pattern_name(layer: int) -> str:
    return f"decoder.layers.{layer}.cross_attn.pattern"


def out_name(layer: int) -> str:
    return f"decoder.layers.{layer}.cross_attn.out"


LOGIT_OUTPUTS = ("logits.target_logprob", "logits.argmax", "logits.entropy")


class _Builder:
    def __init__(self, weights: ModelBin):
        self.w = weights
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self._n}_{op_type}", **attrs))
        return out

    def weight(self, name: str) -> np.ndarray:
        if not self.w.has(name):
            raise ModelError(f"model.bin has no variable {name}: not a CTranslate2 Whisper model")
        return self.w.float32(name)

    def bias(self, name: str, size: int) -> np.ndarray:
        return self.w.float32(name) if self.w.has(name) else np.zeros(size, np.float32)

    def linear(self, x: str, prefix: str, tag: str) -> str:
        w = self.weight(f"{prefix}/weight")  # [out, in]
        wt = self.const(f"{tag}.W", w.T)
        b = self.const(f"{tag}.b", self.bias(f"{prefix}/bias", w.shape[0]))
        return self.op("Add", [self.op("MatMul", [x, wt]), b])

    def layer_norm(self, x: str, prefix: str, tag: str) -> str:
        g = self.const(f"{tag}.ln.g", self.weight(f"{prefix}/gamma"))
        b = self.const(f"{tag}.ln.b", self.weight(f"{prefix}/beta"))
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=EPS)

    def heads(self, x: str, n_heads: int, d_head: int) -> str:
        """[T, d] -> [H, T, dh]"""
        shape = self.const(f"shape_heads_{self._n}", np.array([0, n_heads, d_head], np.int64))
        return self.op("Transpose", [self.op("Reshape", [x, shape])], perm=[1, 0, 2])

    def merge(self, x: str, d_model: int) -> str:
        """[H, T, dh] -> [T, d]"""
        shape = self.const(f"shape_merge_{self._n}", np.array([0, d_model], np.int64))
        return self.op("Reshape", [self.op("Transpose", [x], perm=[1, 0, 2]), shape])


def build(weights: ModelBin) -> tuple[onnx.ModelProto, dict]:
    """The decoder graph and its dimensions (`layers`, `heads`, `d_model`, `vocab`)."""
    if "Whisper" not in weights.spec:
        raise ModelError(f"model.bin holds a {weights.spec}, not a Whisper model")
    b = _Builder(weights)
    emb = b.weight("decoder/embeddings/weight")
    vocab, d_model = emb.shape
    pos = b.weight("decoder/position_encodings/encodings")
    n_heads = int(np.asarray(weights.get("decoder/num_heads")).reshape(-1)[0]) if weights.has("decoder/num_heads") \
        else max(1, d_model // 64)
    n_layers = 0
    while weights.has(f"decoder/layer_{n_layers}/attention/linear_0/weight"):
        n_layers += 1
    if n_layers == 0:
        raise ModelError("model.bin has no decoder layers")
    d_head = d_model // n_heads
    scale = np.float32(1.0 / math.sqrt(d_head))

    tokens = "tokens"  # [T] int64
    enc = "encoder_output"  # [F, d] float32
    rows, targets = "logit_rows", "targets"  # [R] int64
    emb_c = b.const("decoder.embed.W", emb)
    pos_c = b.const("decoder.pos.W", pos)
    zero = b.const("c.zero", np.array([0], np.int64))
    one = b.const("c.one", np.array([1], np.int64))
    t_len = b.op("Shape", [tokens])  # [1] = T
    x = b.op("Add", [b.op("Gather", [emb_c, tokens], axis=0), b.op("Slice", [pos_c, zero, t_len, zero])])
    causal = np.triu(np.full((pos.shape[0], pos.shape[0]), -1e9, np.float32), k=1)
    mask_full = b.const("c.causal", causal)
    starts2 = b.const("c.zero2", np.array([0, 0], np.int64))
    axes2 = b.const("c.axes01", np.array([0, 1], np.int64))
    ends2 = b.op("Concat", [t_len, t_len], axis=0)
    mask = b.op("Slice", [mask_full, starts2, ends2, axes2])
    scale_c = b.const("c.scale", np.array(scale, np.float32))
    split3 = b.const("c.split3", np.array([d_model] * 3, np.int64))
    split2 = b.const("c.split2", np.array([d_model] * 2, np.int64))

    outputs = []
    for layer in range(n_layers):
        p = f"decoder/layer_{layer}"
        tag = f"decoder.layers.{layer}"
        # self-attention (causal)
        h = b.layer_norm(x, f"{p}/self_attention/layer_norm", f"{tag}.self_attn")
        qkv = b.linear(h, f"{p}/self_attention/linear_0", f"{tag}.self_attn.qkv")
        q = b.op("Split", [qkv, split3], axis=-1)
        q, k, v = q, q + "_k", q + "_v"
        b.nodes[-1].output[:] = [q, k, v]
        qh, kh, vh = (b.heads(t, n_heads, d_head) for t in (q, k, v))
        scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [qh, b.op("Transpose", [kh], perm=[0, 2, 1])]),
                                           scale_c]), mask])
        attn = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), vh])
        x = b.op("Add", [x, b.linear(b.merge(attn, d_model), f"{p}/self_attention/linear_1", f"{tag}.self_attn.o")])
        # cross-attention over the encoder output
        h = b.layer_norm(x, f"{p}/attention/layer_norm", f"{tag}.cross_attn")
        q = b.linear(h, f"{p}/attention/linear_0", f"{tag}.cross_attn.q")
        kv = b.linear(enc, f"{p}/attention/linear_1", f"{tag}.cross_attn.kv")
        k = b.op("Split", [kv, split2], axis=-1)
        k, v = k, k + "_v"
        b.nodes[-1].output[:] = [k, v]
        qh, kh, vh = b.heads(q, n_heads, d_head), b.heads(k, n_heads, d_head), b.heads(v, n_heads, d_head)
        scores = b.op("Mul", [b.op("MatMul", [qh, b.op("Transpose", [kh], perm=[0, 2, 1])]), scale_c])
        pattern = b.op("Softmax", [scores], name=pattern_name(layer), axis=-1)
        cross = b.linear(b.merge(b.op("MatMul", [pattern, vh]), d_model), f"{p}/attention/linear_2",
                         f"{tag}.cross_attn.o")
        cross = b.op("Identity", [cross], name=out_name(layer))
        x = b.op("Add", [x, cross])
        outputs += [(pattern_name(layer), [n_heads, None, None]), (out_name(layer), [None, d_model])]
        # feed-forward with exact GELU
        h = b.layer_norm(x, f"{p}/ffn/layer_norm", f"{tag}.ffn")
        u = b.linear(h, f"{p}/ffn/linear_0", f"{tag}.ffn.in")
        gelu = b.op("Mul", [b.op("Mul", [u, b.const(f"{tag}.half", np.array(0.5, np.float32))]),
                            b.op("Add", [b.op("Erf", [b.op("Mul", [u, b.const(f"{tag}.isqrt2", np.array(
                                1 / math.sqrt(2), np.float32))])]), b.const(f"{tag}.one", np.array(1.0, np.float32))])])
        x = b.op("Add", [x, b.linear(gelu, f"{p}/ffn/linear_1", f"{tag}.ffn.out")])

    x = b.layer_norm(x, "decoder/layer_norm", "decoder.final")
    picked = b.op("Gather", [x, rows], axis=0)  # [R, d]
    proj = b.const("decoder.unembed.W", emb.T.copy()) if not weights.has("decoder/projection/weight") or \
        weights.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight" else \
        b.const("decoder.unembed.W", b.weight("decoder/projection/weight").T.copy())
    logits = b.op("MatMul", [picked, proj])
    if weights.has("decoder/projection/bias"):
        logits = b.op("Add", [logits, b.const("decoder.unembed.b", b.weight("decoder/projection/bias"))])
    logp = b.op("LogSoftmax", [logits], axis=-1)
    target_lp = b.op("GatherElements", [logp, b.op("Unsqueeze", [targets, one])], axis=1)
    b.op("Squeeze", [target_lp, one], name=LOGIT_OUTPUTS[0])
    b.op("ArgMax", [logp], name=LOGIT_OUTPUTS[1], axis=-1, keepdims=0)
    ent = b.op("ReduceSum", [b.op("Mul", [b.op("Exp", [logp]), logp]), one], keepdims=0)
    b.op("Neg", [ent], name=LOGIT_OUTPUTS[2])

    graph = helper.make_graph(
        b.nodes, "whisper_decoder_probe",
        inputs=[helper.make_tensor_value_info(tokens, TensorProto.INT64, ["T"]),
                helper.make_tensor_value_info(enc, TensorProto.FLOAT, ["F", d_model]),
                helper.make_tensor_value_info(rows, TensorProto.INT64, ["R"]),
                helper.make_tensor_value_info(targets, TensorProto.INT64, ["R"])],
        outputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs]
        + [helper.make_tensor_value_info(LOGIT_OUTPUTS[0], TensorProto.FLOAT, ["R"]),
           helper.make_tensor_value_info(LOGIT_OUTPUTS[1], TensorProto.INT64, ["R"]),
           helper.make_tensor_value_info(LOGIT_OUTPUTS[2], TensorProto.FLOAT, ["R"])],
        initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="whisper-guard")
    model.ir_version = 8
    dims = {"layers": n_layers, "heads": n_heads, "d_model": d_model, "vocab": vocab, "max_positions": pos.shape[0]}
    return model, dims

"""The ONNX graph of a Llama model, with the inputs and outputs of Hugging Face Optimum's
`text-generation-with-past` export, so a model a user exports from a real checkpoint with
`optimum-cli export onnx --task text-generation-with-past` serves with no code change:

  inputs   input_ids [batch, seq] int64, attention_mask [batch, past + seq] int64,
           position_ids [batch, seq] int64, past_key_values.N.key/value [batch, kv_heads, past, head_dim]
  outputs  logits [batch, seq, vocab], present.N.key/value [batch, kv_heads, past + seq, head_dim]

The attention mask covers past and new positions; a 0 hides a key (padding), and new
positions also see only earlier new positions (causal). Positions come from position_ids,
so a batch may mix sequences of different lengths with holes in a padded past.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.generate.llama import LlamaSpec, Weights

OPSET = 17
IR_VERSION = 8
# A large finite negative: a row masked entirely (never produced by the engine) stays finite.
MASKED = -1e9


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, kind: str, inputs: list[str], **attrs: Any) -> str:
        self._count += 1
        out = f"{kind.lower()}_{self._count}"
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def op_to(self, kind: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(kind, inputs, [output], **attrs))
        return output

    def linear(self, x: str, weight_name: str, weights: Weights) -> str:
        # Stored [in, out] so that MatMul needs no transpose at run time.
        w = self.const(weight_name, np.ascontiguousarray(weights[weight_name].T))
        return self.op("MatMul", [x, w])

    def rms_norm(self, x: str, weight_name: str, weights: Weights, eps: float) -> str:
        square = self.op("Mul", [x, x])
        mean = self.op("ReduceMean", [square], axes=[-1], keepdims=1)
        eps_name = self.const(f"{weight_name}.eps", np.array(eps, dtype=np.float32))
        denom = self.op("Sqrt", [self.op("Add", [mean, eps_name])])
        w = self.const(weight_name, weights[weight_name])
        return self.op("Mul", [self.op("Div", [x, denom]), w])

    def rotate(self, x: str, cos: str, sin: str, half: int) -> str:
        halves = self.const(f"rot_split_{self._count}", np.array([half, half], dtype=np.int64))
        first, second = f"rot_a_{self._count}", f"rot_b_{self._count}"
        self.nodes.append(helper.make_node("Split", [x, halves], [first, second], axis=-1))
        rotated = self.op("Concat", [self.op("Neg", [second]), first], axis=-1)
        return self.op("Add", [self.op("Mul", [x, cos]), self.op("Mul", [rotated, sin])])


def _positions(g: _Graph, spec: LlamaSpec) -> tuple[str, str]:
    """cos and sin [batch, 1, seq, head_dim] of the rotary embedding at position_ids."""
    hd = spec.head_dim
    inv_freq = (1.0 / (spec.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))).astype(np.float32)
    inv = g.const("rotary.inv_freq", inv_freq)
    pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], to=TensorProto.FLOAT), g.const("axis_last", np.array([-1], np.int64))])
    freqs = g.op("Mul", [pos, inv])
    angles = g.op("Concat", [freqs, freqs], axis=-1)
    axis1 = g.const("axis_1", np.array([1], np.int64))
    return g.op("Unsqueeze", [g.op("Cos", [angles]), axis1]), g.op("Unsqueeze", [g.op("Sin", [angles]), axis1])


def _attention_bias(g: _Graph) -> str:
    """[batch, 1, 1, seq, past + seq]: 0 where a query may see a key, MASKED elsewhere."""
    past = g.op("Shape", ["past_key_values.0.key"], start=2, end=3)
    seq = g.op("Shape", ["input_ids"], start=1, end=2)
    total = g.op("Add", [past, seq])
    zero = g.const("scalar_0", np.array(0, np.int64))
    one = g.const("scalar_1", np.array(1, np.int64))
    squeeze0 = g.const("axis_0", np.array([0], np.int64))
    past_s, total_s = g.op("Squeeze", [past, squeeze0]), g.op("Squeeze", [total, squeeze0])
    cols = g.op("Unsqueeze", [g.op("Range", [zero, total_s, one]), squeeze0])  # [1, T]
    rows = g.op("Unsqueeze", [g.op("Range", [past_s, total_s, one]), g.const("axis_1b", np.array([1], np.int64))])  # [S, 1]
    causal = g.op("LessOrEqual", [cols, rows])  # [S, T]
    keep = g.op("Equal", ["attention_mask", one])  # [B, T]
    keep = g.op("Unsqueeze", [keep, g.const("axes_123", np.array([1, 2, 3], np.int64))])  # [B, 1, 1, 1, T]
    allowed = g.op("And", [causal, keep])  # [B, 1, 1, S, T]
    return g.op("Where", [allowed, g.const("bias_open", np.array(0.0, np.float32)), g.const("bias_masked", np.array(MASKED, np.float32))])


def _layer(g: _Graph, spec: LlamaSpec, weights: Weights, i: int, x: str, cos: str, sin: str, bias: str) -> str:
    p = f"model.layers.{i}."
    h, kvh, hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
    normed = g.rms_norm(x, p + "input_layernorm.weight", weights, spec.rms_norm_eps)

    def heads(proj: str, count: int) -> str:
        flat = g.linear(normed, p + f"self_attn.{proj}.weight", weights)
        shaped = g.op("Reshape", [flat, g.const(f"{p}{proj}.shape", np.array([0, 0, count, hd], np.int64))])
        return g.op("Transpose", [shaped], perm=[0, 2, 1, 3])

    q = g.rotate(heads("q_proj", h), cos, sin, hd // 2)
    k = g.rotate(heads("k_proj", kvh), cos, sin, hd // 2)
    v = heads("v_proj", kvh)
    keys = g.op_to("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)
    values = g.op_to("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
    # Grouped-query attention without copying KV: query heads [B, kvh*group, S, hd] are viewed
    # as [B, kvh, group, S, hd] and every group broadcasts over its one KV head.
    grouped = g.op("Reshape", [q, g.const(f"{p}q.grouped", np.array([0, kvh, spec.group, -1, hd], np.int64))])
    axis2 = g.const(f"{p}axis2", np.array([2], np.int64))
    # Transpose right before MatMul: ORT fuses the pair into one FusedMatMul that reads K
    # transposed in place; any op in between would make it copy the whole cache every step.
    keys_t = g.op("Transpose", [g.op("Unsqueeze", [keys, axis2])], perm=[0, 1, 2, 4, 3])
    scale = g.const(f"{p}scale", np.array(1.0 / np.sqrt(hd), np.float32))
    scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [grouped, keys_t]), scale]), bias])
    probs = g.op("Softmax", [scores], axis=-1)
    context = g.op("MatMul", [probs, g.op("Unsqueeze", [values, axis2])])
    context = g.op("Reshape", [context, g.const(f"{p}ctx.heads", np.array([0, h, -1, hd], np.int64))])
    context = g.op("Transpose", [context], perm=[0, 2, 1, 3])
    context = g.op("Reshape", [context, g.const(f"{p}ctx.flat", np.array([0, 0, h * hd], np.int64))])
    x = g.op("Add", [x, g.linear(context, p + "self_attn.o_proj.weight", weights)])

    normed = g.rms_norm(x, p + "post_attention_layernorm.weight", weights, spec.rms_norm_eps)
    gate = g.linear(normed, p + "mlp.gate_proj.weight", weights)
    up = g.linear(normed, p + "mlp.up_proj.weight", weights)
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
    return g.op("Add", [x, g.linear(act, p + "mlp.down_proj.weight", weights)])


def export(spec: LlamaSpec, weights: Weights, name: str) -> bytes:
    g = _Graph()
    x = g.op("Gather", [g.const("model.embed_tokens.weight", weights["model.embed_tokens.weight"]), "input_ids"], axis=0)
    cos, sin = _positions(g, spec)
    bias = _attention_bias(g)
    for i in range(spec.num_layers):
        x = _layer(g, spec, weights, i, x, cos, sin, bias)
    x = g.rms_norm(x, "model.norm.weight", weights, spec.rms_norm_eps)
    g.op_to("MatMul", [x, g.const("lm_head.weight", np.ascontiguousarray(weights["lm_head.weight"].T))], "logits")

    kv_shape: list[str | int] = ["batch_size", spec.num_kv_heads, "past_sequence_length", spec.head_dim]
    present_shape: list[str | int] = ["batch_size", spec.num_kv_heads, "total_sequence_length", spec.head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", spec.vocab_size])]
    for i in range(spec.num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_shape))
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sluice")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()

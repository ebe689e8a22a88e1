"""The Llama architecture in numpy: its shape, seeded weights, and a reference forward pass.

The reference shares no code with the ONNX graph (`onnx_export.py`) or the engine, so a test
that compares their logits checks the export and the whole serving path against plain arithmetic.
Weight names and layouts are Hugging Face's (`model.layers.N.self_attn.q_proj.weight`, Linear
weights stored [out, in]), so the same dictionary is a valid `model.safetensors`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class LlamaSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        assert self.hidden_size % self.num_heads == 0, "hidden_size must split evenly into heads"
        assert self.num_heads % self.num_kv_heads == 0, "query heads must group evenly over KV heads"
        assert self.head_dim % 2 == 0, "rotary positions need an even head dimension"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def parameter_count(self) -> int:
        d, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        per_layer = 2 * d * d + 2 * d * kv + 3 * d * self.intermediate_size + 2 * d
        return 2 * self.vocab_size * d + self.num_layers * per_layer + d

    def hf_config(self, bos_token_id: int, eos_token_id: int) -> dict[str, object]:
        """config.json as transformers (and vLLM) read it for LlamaForCausalLM."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf_config(cls, config: dict[str, object]) -> LlamaSpec:
        def num(key: str) -> int:
            value = config[key]
            assert isinstance(value, int), f"config.json: {key} must be an integer"
            return value

        return cls(
            vocab_size=num("vocab_size"),
            hidden_size=num("hidden_size"),
            num_layers=num("num_hidden_layers"),
            num_heads=num("num_attention_heads"),
            num_kv_heads=int(config.get("num_key_value_heads", config["num_attention_heads"])),  # type: ignore[call-overload]
            intermediate_size=num("intermediate_size"),
            max_position_embeddings=num("max_position_embeddings"),
            rope_theta=float(config.get("rope_theta", 10000.0)),  # type: ignore[arg-type]
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),  # type: ignore[arg-type]
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def make_weights(spec: LlamaSpec, seed: int) -> Weights:
    """Seeded random weights, scaled so activations stay finite and the next-token
    distribution is peaked enough that greedy decoding has clear winners."""
    rng = np.random.default_rng(seed)
    d, hd, kv = spec.hidden_size, spec.head_dim, spec.num_kv_heads * spec.head_dim

    def linear(out_features: int, in_features: int, gain: float = 1.0) -> np.ndarray:
        scale = np.float32(gain / np.sqrt(in_features))
        return np.asarray(rng.standard_normal((out_features, in_features), dtype=np.float32) * scale, dtype=np.float32)

    weights: Weights = {"model.embed_tokens.weight": rng.standard_normal((spec.vocab_size, d), dtype=np.float32)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        weights[p + "self_attn.q_proj.weight"] = linear(spec.num_heads * hd, d)
        weights[p + "self_attn.k_proj.weight"] = linear(kv, d)
        weights[p + "self_attn.v_proj.weight"] = linear(kv, d)
        weights[p + "self_attn.o_proj.weight"] = linear(d, spec.num_heads * hd, 0.5)
        weights[p + "post_attention_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        weights[p + "mlp.gate_proj.weight"] = linear(spec.intermediate_size, d)
        weights[p + "mlp.up_proj.weight"] = linear(spec.intermediate_size, d)
        weights[p + "mlp.down_proj.weight"] = linear(d, spec.intermediate_size, 0.5)
    weights["model.norm.weight"] = np.ones(d, dtype=np.float32)
    weights["lm_head.weight"] = linear(spec.vocab_size, d, 4.0)
    return weights


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return np.asarray((x / np.sqrt(variance + eps)).astype(np.float32) * weight, dtype=np.float32)


def rotary(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """HF's rotate-half rotary embedding of x [heads, seq, head_dim] at `positions` [seq]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, x.shape[-1], 2, dtype=np.float64) / x.shape[-1]))
    freqs = positions[:, None].astype(np.float64) * inv_freq[None, :]
    cos = np.cos(np.concatenate([freqs, freqs], axis=-1)).astype(np.float32)
    sin = np.sin(np.concatenate([freqs, freqs], axis=-1)).astype(np.float32)
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return np.asarray(x * cos + rotated * sin, dtype=np.float32)


class ReferenceModel:
    """One sequence at a time, with its own KV cache: `forward(tokens)` appends tokens and
    returns their logits [len(tokens), vocab], exactly as a causal LM with past would."""

    def __init__(self, spec: LlamaSpec, weights: Weights) -> None:
        self.spec = spec
        self.w = weights
        self.keys: list[np.ndarray] = [np.zeros((spec.num_kv_heads, 0, spec.head_dim), np.float32) for _ in range(spec.num_layers)]
        self.values: list[np.ndarray] = [np.zeros((spec.num_kv_heads, 0, spec.head_dim), np.float32) for _ in range(spec.num_layers)]

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[1])

    def forward(self, tokens: list[int]) -> np.ndarray:
        s = self.spec
        n, past = len(tokens), self.length
        positions = np.arange(past, past + n)
        x = self.w["model.embed_tokens.weight"][np.asarray(tokens)]
        causal = np.tril(np.ones((n, past + n), dtype=bool), k=past)
        for i in range(s.num_layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, self.w[p + "input_layernorm.weight"], s.rms_norm_eps)
            q = (h @ self.w[p + "self_attn.q_proj.weight"].T).reshape(n, s.num_heads, s.head_dim).transpose(1, 0, 2)
            k = (h @ self.w[p + "self_attn.k_proj.weight"].T).reshape(n, s.num_kv_heads, s.head_dim).transpose(1, 0, 2)
            v = (h @ self.w[p + "self_attn.v_proj.weight"].T).reshape(n, s.num_kv_heads, s.head_dim).transpose(1, 0, 2)
            q, k = rotary(q, positions, s.rope_theta), rotary(k, positions, s.rope_theta)
            self.keys[i] = np.concatenate([self.keys[i], k], axis=1)
            self.values[i] = np.concatenate([self.values[i], v], axis=1)
            keys = np.repeat(self.keys[i], s.group, axis=0)
            values = np.repeat(self.values[i], s.group, axis=0)
            scores = (q @ keys.transpose(0, 2, 1)) / np.sqrt(s.head_dim)
            scores = np.where(causal[None], scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = (probs @ values).transpose(1, 0, 2).reshape(n, s.num_heads * s.head_dim)
            x = x + attn @ self.w[p + "self_attn.o_proj.weight"].T
            h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], s.rms_norm_eps)
            gate = h @ self.w[p + "mlp.gate_proj.weight"].T
            up = h @ self.w[p + "mlp.up_proj.weight"].T
            x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ self.w[p + "mlp.down_proj.weight"].T
        x = rms_norm(x, self.w["model.norm.weight"], s.rms_norm_eps)
        return (x @ self.w["lm_head.weight"].T).astype(np.float32)

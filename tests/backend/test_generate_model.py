"""The generative model family: files in the formats users have, the ONNX export against a
numpy forward pass, the tokenizer and chat template, and the block KV cache."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import numpy as np
import onnxruntime as ort
import pytest

from inference.gen_models import generate
from inference.generate.checkpoint import TINY, build_files, read_spec, read_weights
from inference.generate.config import is_generative, load_config
from inference.generate.kv_cache import BlockPool, prefix_hashes
from inference.generate.llama import ReferenceModel
from inference.generate.tokenizer import CHAT_TEMPLATE_JINJA, TextTokenizer, render_chat

VERSION = Path(TINY.name) / "1"


def test_files_are_the_hugging_face_and_optimum_layouts(model_repo: Path) -> None:
    version = model_repo / VERSION
    config = json.loads((version / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["num_key_value_heads"] < config["num_attention_heads"], "grouped-query attention"
    weights = read_weights(version)
    assert "model.layers.0.self_attn.q_proj.weight" in weights and "lm_head.weight" in weights
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (config["num_key_value_heads"] * config["head_dim"], config["hidden_size"])
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    layers = config["num_hidden_layers"]
    assert inputs == {"input_ids", "attention_mask", "position_ids"} | {f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")}
    assert outputs == {"logits"} | {f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")}
    assert is_generative(model_repo / TINY.name) and not is_generative(model_repo / "classifier")
    assert load_config(model_repo / TINY.name).backend == "generate"


def test_generation_is_deterministic(model_repo: Path) -> None:
    again = build_files(TINY)
    for name, content in again.items():
        assert (model_repo / VERSION / name).read_bytes() == content, f"{name} differs between two generations"
    assert generate(model_repo) == [], "a second `make models` rewrites nothing"


def test_onnx_logits_equal_the_numpy_reference(model_repo: Path) -> None:
    """Prefill, then three decode steps with past: the ONNX model against plain numpy, from the
    safetensors weights (the file vLLM or transformers would load)."""
    version = model_repo / VERSION
    spec = read_spec(version)
    reference = ReferenceModel(spec, read_weights(version))
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    tokens = [7, 42, 300, 11, 99, 5]
    past = {f"past_key_values.{i}.{k}": np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), np.float32)
            for i in range(spec.num_layers) for k in ("key", "value")}
    new, length = tokens, 0
    for _ in range(4):
        feeds = {
            "input_ids": np.array([new], np.int64),
            "attention_mask": np.ones((1, length + len(new)), np.int64),
            "position_ids": np.arange(length, length + len(new), dtype=np.int64)[None],
            **past,
        }
        names = ["logits"] + [f"present.{i}.{k}" for i in range(spec.num_layers) for k in ("key", "value")]
        logits, *presents = session.run(names, feeds)
        expected = reference.forward(new)
        np.testing.assert_allclose(logits[0], expected, atol=1e-4, rtol=0)
        past = {n.replace("present", "past_key_values"): p for n, p in zip(names[1:], presents, strict=True)}
        length += len(new)
        new = [int(expected[-1].argmax())]


def test_padded_batch_with_holes_matches_single_sequences(model_repo: Path) -> None:
    """What the engine relies on: two sequences of different lengths in one call, the shorter
    one's past padded with masked columns, give each sequence's own logits."""
    version = model_repo / VERSION
    spec = read_spec(version)
    weights = read_weights(version)
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    a, b = [3, 4, 5], [9, 8, 7, 6, 5, 4, 3]
    ref_a, ref_b = ReferenceModel(spec, weights), ReferenceModel(spec, weights)
    ref_a.forward(a)
    ref_b.forward(b)
    width = len(b)
    past = {}
    for i in range(spec.num_layers):
        for kind, store_a, store_b in (("key", ref_a.keys, ref_b.keys), ("value", ref_a.values, ref_b.values)):
            arr = np.zeros((2, spec.num_kv_heads, width, spec.head_dim), np.float32)
            arr[0, :, : len(a)] = store_a[i]
            arr[1, :, : len(b)] = store_b[i]
            past[f"past_key_values.{i}.{kind}"] = arr
    mask = np.zeros((2, width + 1), np.int64)
    mask[0, : len(a)] = 1
    mask[1, : len(b)] = 1
    mask[:, width] = 1
    feeds = {"input_ids": np.array([[17], [23]]), "attention_mask": mask, "position_ids": np.array([[len(a)], [len(b)]]), **past}
    logits = session.run(["logits"], feeds)[0]
    np.testing.assert_allclose(logits[0, 0], ref_a.forward([17])[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits[1, 0], ref_b.forward([23])[0], atol=1e-4, rtol=0)


def test_chat_template_matches_the_jinja_one_tools_read(model_repo: Path) -> None:
    messages = [("system", "Be brief."), ("user", "Tell me about the river."), ("assistant", "It is long."), ("user", "And the gate?")]
    jinja = jinja2.Environment().from_string(CHAT_TEMPLATE_JINJA)
    rendered = jinja.render(messages=[{"role": r, "content": c} for r, c in messages], add_generation_prompt=True)
    assert render_chat(messages) == rendered
    config = json.loads((model_repo / VERSION / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE_JINJA
    tokenizer = TextTokenizer.load(model_repo / VERSION / "tokenizer.json")
    ids = tokenizer.encode(rendered)
    # Special tokens are single ids, skipped on decode.
    assert tokenizer.decode(ids) == "\nBe brief.\n\nTell me about the river.\n\nIt is long.\n\nAnd the gate?\n\n"
    text = "The gatekeeper watched the level of the water every morning."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode(text)) < len(text) // 2, "BPE merged the corpus's common words"


def test_block_pool_shares_prefixes_and_evicts_least_recently_used() -> None:
    pool = BlockPool(num_blocks=4, block_size=2, layers=1, kv_heads=1, head_dim=1)
    tokens = [1, 2, 3, 4, 5]
    hashes = prefix_hashes(tokens, 2)
    assert len(hashes) == 2 and prefix_hashes([1, 2, 9, 9], 2)[0] == hashes[0] and prefix_hashes([1, 2, 9, 9], 2)[1] != hashes[1]
    first = pool.allocate(3)
    assert first is not None and pool.usage() == 0.75
    pool.register(first[0], hashes[0])
    pool.register(first[1], hashes[1])
    pool.release(first)
    assert pool.usage() == 0.0 and pool.available == 4
    assert pool.match(hashes) == first[:2], "a released block keeps its prefix until reused"
    pool.release(first[:2])
    # Three blocks: the two never cached first, then the cached one released least recently,
    # which is the prefix's tail (released last-first): its head stays findable.
    taken = pool.allocate(3)
    assert taken is not None and first[1] in taken and first[0] not in taken
    assert pool.match(hashes) == [first[0]]
    assert pool.allocate(1) is None and pool.available == 0, "a failed allocation takes nothing"


def test_block_pool_round_trips_keys_and_values_across_blocks() -> None:
    pool = BlockPool(num_blocks=8, block_size=4, layers=2, kv_heads=2, head_dim=3)
    blocks = pool.allocate(3)
    assert blocks is not None
    keys = np.random.default_rng(1).standard_normal((2, 2, 10, 3)).astype(np.float32)
    pool.write(blocks, 0, keys[:, :, :6], -keys[:, :, :6])
    pool.write(blocks, 6, keys[:, :, 6:], -keys[:, :, 6:])
    got_k, got_v = pool.read(blocks, 10)
    np.testing.assert_array_equal(got_k, keys)
    np.testing.assert_array_equal(got_v, -keys)


@pytest.mark.parametrize("prompt", ["", "a" * 100])
def test_tokenizer_bound_on_bytes_per_token(model_repo: Path, prompt: str) -> None:
    tokenizer = TextTokenizer.load(model_repo / VERSION / "tokenizer.json")
    assert len(tokenizer.encode(prompt)) >= len(prompt.encode()) / tokenizer.max_token_bytes

"""Write and read a generative model version: the Hugging Face files and the ONNX export."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save
from tokenizers import Tokenizer

from inference.generate.llama import LlamaSpec, Weights, make_weights
from inference.generate.onnx_export import export
from inference.generate.tokenizer import BOS, END, EOS, tokenizer_config, train

HF_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
ONNX_MODEL = "model.onnx"


@dataclass(frozen=True)
class Family:
    """One size of the demo model family. The spec's vocab_size is what the tokenizer is asked
    to learn; the model gets the size it really learned."""

    name: str
    spec: LlamaSpec
    seed: int


TINY = Family("tiny-llama", LlamaSpec(512, 64, 2, 4, 2, 172, 2048), seed=11)
SMALL = Family("small-llama", LlamaSpec(1024, 512, 8, 8, 2, 1408, 4096), seed=12)
FAMILIES = {f.name: f for f in (TINY, SMALL)}


# A canary candidate of a family: the input embedding of this one token redrawn, so greedy
# outputs change for prompts that contain it (and only for them).
CANDIDATE_TOKEN = " river"


def build_files(family: Family, candidate: bool = False) -> dict[str, bytes]:
    """Every file of one version, by file name: deterministic for a family (and its candidate)."""
    tokenizer = train(family.spec.vocab_size)
    spec = replace(family.spec, vocab_size=tokenizer.get_vocab_size())
    weights = make_weights(spec, family.seed)
    if candidate:
        ids = tokenizer.encode(CANDIDATE_TOKEN, add_special_tokens=False).ids
        assert len(ids) == 1, f"{CANDIDATE_TOKEN!r} is not one token of the trained tokenizer"
        embeddings = weights["model.embed_tokens.weight"]
        embeddings[ids[0]] = np.random.default_rng(family.seed + 1000).standard_normal(embeddings.shape[1])
    bos, eos, end = (_token_id(tokenizer, t) for t in (BOS, EOS, END))
    hf_config = spec.hf_config(bos_token_id=bos, eos_token_id=eos)

    def dump(value: object) -> bytes:
        return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()

    return {
        HF_CONFIG: dump(hf_config),
        WEIGHTS: save(weights, metadata={"format": "pt"}),
        TOKENIZER: tokenizer.to_str(pretty=True).encode(),
        TOKENIZER_CONFIG: dump(tokenizer_config()),
        GENERATION_CONFIG: dump({"bos_token_id": bos, "eos_token_id": [eos, end]}),
        ONNX_MODEL: export(spec, weights, family.name),
    }


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    assert found is not None, f"the trained tokenizer lacks {token!r}"
    return int(found)


def read_spec(version_dir: Path) -> LlamaSpec:
    return LlamaSpec.from_hf_config(json.loads((version_dir / HF_CONFIG).read_text()))


def read_weights(version_dir: Path) -> Weights:
    return dict(load_file(str(version_dir / WEIGHTS)))



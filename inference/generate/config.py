"""A generative model's `config.yaml`: what the engine needs beyond the checkpoint itself.

Its directory holds versions laid out as Hugging Face checkpoints plus their ONNX export:
<model>/<version>/{config.json, model.safetensors, tokenizer.json, tokenizer_config.json, model.onnx}.
`backend: generate` is what tells it from a tensor model in the same repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from inference.config import CONFIG_FILE, read_config

BACKEND = "generate"


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    backend: Literal["generate"] = "generate"
    # Prompt plus completion, in tokens; at most the checkpoint's max_position_embeddings.
    max_model_len: Annotated[int, Field(ge=16)] = 1024
    # KV cache: tokens per block, and the memory all blocks may take together.
    block_size: Annotated[int, Field(ge=1, le=1024)] = 16
    kv_cache_mb: Annotated[float, Field(gt=0)] = 64.0
    # Sequences decoded together in one step, and requests that may wait for a place.
    max_num_seqs: Annotated[int, Field(ge=1, le=1024)] = 64
    max_waiting: Annotated[int, Field(ge=0)] = 256
    # Prompt tokens prefilled per engine step: long prompts go in chunks of this size so
    # that running streams keep receiving a token every step.
    prefill_chunk_tokens: Annotated[int, Field(ge=16)] = 256
    enable_prefix_caching: bool = True

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def is_generative(model_dir: Path) -> bool:
    path = model_dir / CONFIG_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and raw.get("backend") == BACKEND


def load_config(model_dir: Path) -> GenerateConfig:
    return read_config(model_dir, GenerateConfig.model_validate)

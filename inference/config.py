"""A model's `config.yaml`: our YAML form of Triton's config.pbtxt.

Field names follow Triton's JSON model configuration (`max_batch_size`, `input`,
`data_type: TYPE_FP32`, `dims`, `version_policy`, `dynamic_batching`...) so that
`/v2/models/{m}/config` can hand the file back as-is to tools written for Triton
(perf_analyzer reads it). `response_cache` TTL/size and `deterministic` are ours.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from inference.datatypes import DATATYPES

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.onnx"


class _Strict(BaseModel):
    # A typo in a config file must fail loading, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    name: str
    data_type: str
    # Without the batch dimension when max_batch_size > 0, as in Triton; -1 = any size.
    dims: list[int]

    @model_validator(mode="after")
    def _known_type(self) -> TensorConfig:
        if self.datatype not in DATATYPES:
            raise ValueError(f"tensor {self.name!r}: unknown data_type {self.data_type!r}")
        return self

    @property
    def datatype(self) -> str:
        """The KServe v2 name ("FP32") of Triton's "TYPE_FP32"."""
        return self.data_type.removeprefix("TYPE_")


class LatestPolicy(_Strict):
    num_versions: Annotated[int, Field(ge=1)] = 1


class SpecificPolicy(_Strict):
    versions: list[Annotated[int, Field(ge=1)]]


class VersionPolicy(_Strict):
    """Exactly one of latest / all / specific, as in Triton."""

    latest: LatestPolicy | None = None
    all: dict[str, object] | None = None
    specific: SpecificPolicy | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"version_policy must have one of latest/all/specific, got {chosen}")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions this policy serves out of those on disk, ascending."""
        ordered = sorted(available)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific.versions]
        num = self.latest.num_versions if self.latest is not None else 1
        return ordered[-num:]


class QueuePolicy(_Strict):
    # 0 = unbounded in Triton; we bound every queue (see batching.py), so 0 means --max-queue-size.
    max_queue_size: Annotated[int, Field(ge=0)] = 0
    # 0 = no timeout unless the request asks for one.
    default_timeout_microseconds: Annotated[int, Field(ge=0)] = 0
    allow_timeout_override: bool = True


class DynamicBatching(_Strict):
    max_queue_delay_microseconds: Annotated[int, Field(ge=0)] = 0
    preferred_batch_size: list[Annotated[int, Field(ge=1)]] = []
    # 0 = one level. Requests name 1..priority_levels; 1 is served first, as in Triton.
    priority_levels: Annotated[int, Field(ge=0)] = 0
    default_priority_level: Annotated[int, Field(ge=0)] = 0
    default_queue_policy: QueuePolicy = QueuePolicy()

    @model_validator(mode="after")
    def _levels(self) -> DynamicBatching:
        if self.default_priority_level > self.priority_levels:
            raise ValueError(f"default_priority_level {self.default_priority_level} exceeds priority_levels {self.priority_levels}")
        return self


class InstanceGroup(_Strict):
    """How many `run` calls of one version may execute at the same time."""

    count: Annotated[int, Field(ge=1)] = 1
    kind: Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU"] = "KIND_AUTO"


class ResponseCache(_Strict):
    enable: bool = False
    ttl_seconds: Annotated[float, Field(gt=0)] = 60.0
    max_entries: Annotated[int, Field(ge=1)] = 1024


class ModelConfig(_Strict):
    name: str
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    backend: Literal["onnxruntime"] = "onnxruntime"
    max_batch_size: Annotated[int, Field(ge=0)] = 0
    input: list[TensorConfig]
    output: list[TensorConfig]
    version_policy: VersionPolicy = VersionPolicy()
    dynamic_batching: DynamicBatching | None = None
    instance_group: list[InstanceGroup] = [InstanceGroup()]
    response_cache: ResponseCache = ResponseCache()
    # A model whose output varies for the same input must never be answered from cache.
    deterministic: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.response_cache.enable and not self.deterministic:
            raise ValueError(f"model {self.name!r}: response_cache cannot be enabled on a non-deterministic model")
        if self.dynamic_batching and any(b > self.max_batch_size for b in self.dynamic_batching.preferred_batch_size):
            raise ValueError(f"model {self.name!r}: preferred_batch_size exceeds max_batch_size {self.max_batch_size}")
        names = [t.name for t in self.input] + [t.name for t in self.output]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r}: tensor names must be unique, got {names}")
        return self

    @property
    def instance_count(self) -> int:
        return sum(group.count for group in self.instance_group)

    def full_shape(self, tensor: TensorConfig) -> list[int]:
        """The shape clients see: with the batch dimension (-1) when the model batches."""
        return [-1, *tensor.dims] if self.max_batch_size > 0 else list(tensor.dims)

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_json(), sort_keys=False)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_Config = TypeVar("_Config", bound=_Named)


def read_config(model_dir: Path, model: Callable[[object], _Config]) -> _Config:
    """A model directory's config.yaml, validated by `model`; its name defaults to, and must
    equal, the directory's."""
    path = model_dir / CONFIG_FILE
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", model_dir.name)
    config = model(raw)
    if config.name != model_dir.name:
        raise ValueError(f"{path}: name {config.name!r} differs from its directory {model_dir.name!r}")
    return config


def load_config(model_dir: Path) -> ModelConfig:
    return read_config(model_dir, ModelConfig.model_validate)

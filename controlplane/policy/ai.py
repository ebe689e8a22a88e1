"""Generative-AI policy: public model names routed from the request body (`Model`).

The edge reads `"model"` from an OpenAI request body and sends the request to one of the
backends serving it (filters/llm). The bounds here are the filter's (filters/llm/config.zig).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from controlplane.policy.model import Name, Strict

# Model names as clients write them: "gpt-4o-mini", "meta-llama/Llama-3.1-8B", "qwen2.5:7b".
# Printable ASCII without quotes or backslashes, so the edge can write one into a body as it is.
ModelName = Annotated[str, StringConstraints(pattern=r'^[A-Za-z0-9][!#-\[\]-~]{0,127}$')]

MODEL_BACKENDS_MAX = 8  # the filter's targets per model
MODEL_ROUTES_MAX = 16
MODELS_MAX = 64  # the filter's model table
ENTRY_ROUTES_MAX = 64  # the filter's entry routes
MAX_BODY_BYTES = 8 * 1024 * 1024  # the largest request body the edge reads for its model


class ModelBackend(Strict):
    backend: Name
    weight: Annotated[int, Field(ge=0, le=10000)] = 100
    model: ModelName | None = Field(
        None, description="the name this backend serves, written into the forwarded body in place of the "
                          "public name; null: forward the public name")


class Model(Strict):
    """A public model name (`model` in an OpenAI request body) and the backends serving it."""

    service: Name
    model: ModelName = Field(description="the public name clients send")
    routes: Annotated[list[Name], Field(
        min_length=1, max_length=MODEL_ROUTES_MAX,
        description="routes of the service whose POST bodies name a model (e.g. the one for /v1/)")]
    backends: Annotated[list[ModelBackend], Field(min_length=1, max_length=MODEL_BACKENDS_MAX)]
    fallback: Annotated[list[Name], Field(
        max_length=4, description="backends tried in this order when the chosen backend has no healthy endpoint; "
                                  "they receive the model name chosen for it")] = []
    owned_by: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,64}$")] = "sluice"

    @model_validator(mode="after")
    def _consistent(self) -> Model:
        names = [b.backend for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError("backends names a backend more than once")
        if sum(b.weight for b in self.backends) == 0:
            raise ValueError("backends' weights add up to 0: at least one backend needs weight")
        if len(set(self.routes)) != len(self.routes):
            raise ValueError("routes names a route more than once")
        if len(set(self.fallback)) != len(self.fallback) or set(self.fallback) & set(names):
            raise ValueError("fallback names a backend twice, or one of backends")
        return self

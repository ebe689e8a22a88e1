"""Generative-AI policy: public model names routed from the request body (`Model`), and the
tenants whose API keys the edge checks (`Tenant`).

The edge reads `"model"` from an OpenAI request body and sends the request to one of the
backends serving it (filters/llm). The bounds here are the filter's (filters/llm/config.zig).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, StringConstraints, field_validator, model_validator

from controlplane.policy.model import Name, Strict

# Model names as clients write them: "gpt-4o-mini", "meta-llama/Llama-3.1-8B", "qwen2.5:7b".
# Printable ASCII without quotes or backslashes, so the edge can write one into a body as it is.
ModelName = Annotated[str, StringConstraints(pattern=r'^[A-Za-z0-9][!#-\[\]-~]{0,127}$')]

MODEL_BACKENDS_MAX = 8  # the filter's targets per model
MODEL_ROUTES_MAX = 16
MODELS_MAX = 64  # the filter's model table
ENTRY_ROUTES_MAX = 64  # the filter's entry routes
MAX_BODY_BYTES = 8 * 1024 * 1024  # the largest request body the edge reads for its model
KEYS_MAX = 1024  # the filter's key table, all tenants together
BUDGETS_MAX = 64  # the filter's budget table
BUDGETS_PER_REQUEST_MAX = 4  # budgets one request reserves in (the filter's per-stream state)
WINDOW_S = {"minute": 60, "hour": 3600}  # counted at each Envoy; longer windows by the control plane
KEYS_PER_TENANT_MAX = 64
API_KEY_MIN_LEN = 16


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


# Request priorities (x-sluice-priority): below 0 may be shed, 0 and above never.
Priority = Annotated[int, Field(ge=-1000, le=1000)]


def key_digest(key: str) -> str:
    """How an API key is stored and sent to the edge: its SHA-256, in hex. Keys are random
    (`sluice apikey create` draws 192 bits), so an unsalted hash is enough to keep them secret."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKey(Strict):
    """One API key of a tenant, as stored: its id and its SHA-256 (never the key itself).

    A document may carry the key in clear instead (`key`, for demos written in a file): it is
    hashed when the document is read, and only the hash is stored."""

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    priority: Priority | None = Field(None, description="overrides the tenant's priority for this key")

    @model_validator(mode="before")
    @classmethod
    def _hash_clear_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "key" in data:
            key = data["key"]
            if "sha256" in data:
                raise ValueError("set key or sha256, not both")
            if not isinstance(key, str) or len(key) < API_KEY_MIN_LEN or not key.isprintable() or " " in key:
                raise ValueError(f"key must be at least {API_KEY_MIN_LEN} printable characters without spaces")
            data = {**{k: v for k, v in data.items() if k != "key"}, "sha256": key_digest(key)}
        return data


class Tenant(Strict):
    """Who calls the models: the identity for limits, budgets and metrics. Once any tenant
    exists, every request to a service with models needs one of the tenants' API keys
    (`Authorization: Bearer <key>`)."""

    keys: Annotated[list[ApiKey], Field(max_length=KEYS_PER_TENANT_MAX)] = []
    priority: Priority | None = Field(None, description=(
        "the priority of the tenant's requests (x-sluice-priority, set at the edge over any the "
        "client sent): below 0 is shed first when every replica is full; null: the client's header"))

    @model_validator(mode="after")
    def _unique(self) -> Tenant:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("keys names an id more than once")
        return self


class TokenBudget(Strict):
    """Tokens a tenant may use per window, optionally for one public model: each request reserves
    its estimate (prompt bytes / 4 + max_tokens) at admission and is charged its real usage when
    its answer ends. A minute or an hour is counted by each edge Envoy for its own traffic, in
    fixed windows (UTC). A day or a month is global: the control plane keeps its usage in the
    store, for every edge Envoy together, from local midnight in `zone`."""

    tenant: Name
    model: ModelName | None = Field(None, description="a public model name; null: every model")
    tokens: Annotated[int, Field(ge=1, le=1_000_000_000_000, description="tokens per window")]
    per: Literal["minute", "hour", "day", "month"] = Field(
        "minute", description="minute or hour: counted by each edge Envoy, UTC; day or month: one budget for "
                              "every edge Envoy, counted by the control plane in its store, from midnight in zone")
    zone: Annotated[str, Field(
        pattern=r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$", max_length=64,
        description="IANA time zone in which a day or month starts (e.g. Europe/Berlin); "
                    "minutes and hours are UTC")] = "UTC"
    default_max_tokens: Annotated[int, Field(
        ge=1, le=1_000_000, description="reserved for the completion of a request that names no max_tokens")] = 256
    shadow: bool = Field(False, description="count, never refuse")
    soft_limit_percent: Annotated[int, Field(
        ge=1, le=100, description="past this share of the window, answers carry x-sluice-budget-soft-limit")] | None = None

    @field_validator("zone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of zones, such as Europe
            raise ValueError(f"{zone!r} is not an IANA time zone (such as Europe/Berlin or UTC)") from None
        return zone

    @model_validator(mode="after")
    def _zone_for_long_windows(self) -> TokenBudget:
        if self.per in WINDOW_S and self.zone != "UTC":
            raise ValueError(f"zone applies to day and month windows; a {self.per} is counted in UTC")
        return self

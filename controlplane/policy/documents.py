"""Policy objects as operators exchange them: `{kind, name, spec}` documents, like kubectl's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError, field_validator

from controlplane.policy.ai import Model, Tenant, TokenBudget
from controlplane.policy.canary import Canary
from controlplane.policy.geo import Geo, GeoRoute
from controlplane.policy.model import Backend, Edge, Name, RateLimit, Service, Strict
from controlplane.policy.policy import Policy, Problem
from controlplane.policy.telemetry import Telemetry


@dataclass(frozen=True)
class Kind:
    name: str  # as written in documents: "Service"
    plural: str  # the Policy field and the API path segment: "services"
    spec: type[BaseModel]


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("Backend", "backends", Backend),
        Kind("Service", "services", Service),
        Kind("RateLimit", "ratelimits", RateLimit),
        Kind("Edge", "edges", Edge),
        Kind("Canary", "canaries", Canary),
        Kind("Geo", "geo", Geo),
        Kind("GeoRoute", "georoutes", GeoRoute),
        Kind("Telemetry", "telemetry", Telemetry),
        Kind("Model", "models", Model),
        Kind("Tenant", "tenants", Tenant),
        Kind("TokenBudget", "tokenbudgets", TokenBudget),
    )
}
KIND_BY_PLURAL: dict[str, Kind] = {k.plural: k for k in KINDS.values()}


class InvalidPolicy(ValueError):
    """Raised with every problem found, each naming its field path."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.loc}: {p.msg}" for p in problems))
        self.problems = problems


def problems_of(error: ValidationError, prefix: str = "") -> list[Problem]:
    out = []
    for e in error.errors(include_url=False):
        loc = ".".join(str(part) for part in e["loc"])
        out.append(Problem(loc=f"{prefix}{'.' if prefix and loc else ''}{loc}" or "(document)", msg=e["msg"].removeprefix("Value error, ")))
    return out


class Envelope(Strict):
    kind: str
    name: Name
    spec: dict[str, Any]

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(sorted(KINDS))}")
        return kind


@dataclass(frozen=True)
class Document:
    kind: str
    name: str
    spec: BaseModel

    def dump(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "spec": self.spec.model_dump(mode="json")}


def parse_document(raw: Any, where: str = "") -> Document:
    """Validate one document; problems carry paths such as `spec.routes.0.match`."""
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise InvalidPolicy(problems_of(exc, where)) from None
    try:
        spec = KINDS[envelope.kind].spec.model_validate(envelope.spec)
    except ValidationError as exc:
        raise InvalidPolicy(problems_of(exc, f"{where}{'.' if where else ''}spec")) from None
    return Document(envelope.kind, envelope.name, spec)


def with_document(policy: Policy, doc: Document) -> Policy:
    plural = KINDS[doc.kind].plural
    objects = dict(getattr(policy, plural))
    objects[doc.name] = doc.spec
    return policy.model_copy(update={plural: objects})


def without_object(policy: Policy, plural: str, name: str) -> Policy:
    objects = dict(getattr(policy, plural))
    del objects[name]
    return policy.model_copy(update={plural: objects})


def documents_of(policy: Policy) -> list[Document]:
    return [Document(kind.name, name, spec)
            for kind in KINDS.values()
            for name, spec in sorted(getattr(policy, kind.plural).items())]

"""The policy model: what operators declare. Imports nothing else of sluice."""

from controlplane.policy.documents import (
    KINDS,
    Document,
    InvalidPolicy,
    Kind,
    documents_of,
    parse_document,
    with_document,
    without_object,
)
from controlplane.policy.model import (
    Backend,
    Edge,
    Endpoint,
    KeyPart,
    HeaderMatch,
    Policy,
    Problem,
    RateLimit,
    Route,
    RouteMatch,
    Service,
    WeightedBackend,
)

__all__ = [
    "KINDS",
    "Backend",
    "Document",
    "InvalidPolicy",
    "documents_of",
    "with_document",
    "without_object",
    "Edge",
    "Endpoint",
    "KeyPart",
    "HeaderMatch",
    "Kind",
    "Policy",
    "Problem",
    "RateLimit",
    "Route",
    "RouteMatch",
    "Service",
    "WeightedBackend",
    "parse_document",
]

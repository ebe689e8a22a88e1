"""The policy model: what operators declare. Imports nothing else of sluice."""

from controlplane.policy.canary import Canary, CanaryEvent, CanaryStatus, Thresholds, Webhooks
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
    HeaderMatch,
    KeyPart,
    RateLimit,
    Route,
    RouteMatch,
    Service,
    WeightedBackend,
)
from controlplane.policy.policy import Policy, Problem

__all__ = [
    "KINDS",
    "Backend",
    "Canary",
    "CanaryEvent",
    "CanaryStatus",
    "Document",
    "Edge",
    "Endpoint",
    "HeaderMatch",
    "InvalidPolicy",
    "KeyPart",
    "Kind",
    "Policy",
    "Problem",
    "RateLimit",
    "Route",
    "RouteMatch",
    "Service",
    "Thresholds",
    "Webhooks",
    "WeightedBackend",
    "documents_of",
    "parse_document",
    "with_document",
    "without_object",
]

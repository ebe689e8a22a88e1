"""Traffic policy as operators write it: backends, services, routes and weighted splits.

Field-level rules live on the models (pydantic reports them with their path); rules that
span objects (a route naming a backend that does not exist) live in `Policy.problems`,
which reports the same way, so every rejection names the field that caused it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from controlplane.policy import filter_limits as limits

Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
    Field(description="lower-case letters, digits and '-', 1-63 characters"),
]
HeaderName = Annotated[str, StringConstraints(pattern=r"^:?[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")]
# A header the ratelimit filter reads (a key part, the cost header): its own, shorter bound.
FilterHeaderName = Annotated[str, StringConstraints(
    pattern=r"^:?[A-Za-z0-9!#$%&'*+.^_`|~-]+$", max_length=limits.RATELIMIT_HEADER_NAME_LEN_MAX)]
Host = Annotated[str, StringConstraints(pattern=r"^(\*|\*?[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?)$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_of(model: BaseModel, fields: tuple[str, ...]) -> None:
    chosen = [f for f in fields if getattr(model, f) is not None]
    if len(chosen) != 1:
        raise ValueError(f"set exactly one of {', '.join(fields)} (got {len(chosen)})")


def _check_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
    return pattern


class Endpoint(Strict):
    address: Annotated[str, Field(description="an IPv4 or IPv6 address: EDS endpoints take no host names "
                                              "(resolve them first, as deploy/seed_policy.py does)")]
    port: Annotated[int, Field(ge=1, le=65535)]
    weight: Annotated[int, Field(ge=1, le=128)] = 1

    @field_validator("address")
    @classmethod
    def _ip_address(cls, address: str) -> str:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address: Envoy takes only IP addresses "
                             "in EDS endpoints, so resolve host names before applying") from None
        return address


Percent = Annotated[float, Field(ge=0, le=100)]
WholePercent = Annotated[int, Field(ge=0, le=100)]
Count = Annotated[int, Field(ge=1, le=1_000_000)]


class SuccessRate(Strict):
    """Statistical ejection: endpoints whose success rate falls this far below the mean."""

    stdev_factor: Annotated[float, Field(gt=0, le=100, description="eject below mean - factor × stdev")] = 1.9
    minimum_hosts: Annotated[int, Field(ge=1, le=1024, description="endpoints with enough requests needed")] = 5
    request_volume: Annotated[int, Field(ge=1, le=1_000_000, description="requests per interval to count")] = 100


class FailurePercentage(Strict):
    """Threshold ejection: endpoints failing at least this share of requests in an interval."""

    threshold_percent: WholePercent = 85
    minimum_hosts: Annotated[int, Field(ge=1, le=1024, description="endpoints with enough requests needed")] = 5
    request_volume: Annotated[int, Field(ge=1, le=1_000_000, description="requests per interval to count")] = 50


class OutlierDetection(Strict):
    """Passive health: take an endpoint out of rotation for what its real responses show.

    Each detector is off when null. Consecutive errors eject at once; success_rate and
    failure_percentage are evaluated every interval.
    """

    consecutive_5xx: Annotated[int, Field(ge=1, le=1000)] | None = 5
    consecutive_gateway_errors: Annotated[int, Field(
        ge=1, le=1000, description="502, 503, 504 and connection failures in a row")] | None = 3
    success_rate: SuccessRate | None = None
    failure_percentage: FailurePercentage | None = None
    interval_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    base_ejection_time_s: Annotated[float, Field(gt=0, le=3600, description="times the ejection count")] = 30.0
    max_ejection_time_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    max_ejection_percent: WholePercent = 50

    @model_validator(mode="after")
    def _max_after_base(self) -> OutlierDetection:
        if self.max_ejection_time_s < self.base_ejection_time_s:
            raise ValueError("max_ejection_time_s is below base_ejection_time_s")
        return self


class HealthCheck(Strict):
    """Active health: Envoy GETs `path` on every endpoint; only 200 counts as healthy."""

    path: Annotated[str, StringConstraints(pattern=r"^/[!-~]*$", max_length=1024)] = "/v2/health/ready"
    interval_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] = 1
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = 2

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheck:
        if self.timeout_s > self.interval_s:
            raise ValueError("timeout_s exceeds interval_s: checks would overlap")
        return self


class RetryBudget(Strict):
    """Retries allowed as a share of the requests active on the backend (scales with load)."""

    budget_percent: Annotated[float, Field(gt=0, le=100)] = 20.0
    min_retry_concurrency: Annotated[int, Field(ge=0, le=1_000_000)] = 3


class CircuitBreakers(Strict):
    """Limits on what Envoy sends to one backend at once, across all its endpoints."""

    max_connections: Count = 1024
    max_pending_requests: Count = 1024
    max_requests: Count = 1024
    max_retries: Annotated[Count, Field(description="concurrent retries; used only when retry_budget is null")] = 3
    retry_budget: RetryBudget | None = RetryBudget()


class SlowStart(Strict):
    """A new endpoint's share of traffic ramps up over `window_s` (cold models warm up)."""

    window_s: Annotated[float, Field(gt=0, le=3600)]
    aggression: Annotated[float, Field(gt=0, le=10, description="1: linear ramp; above 1: slower at first")] = 1.0
    min_weight_percent: Percent = 10


LbPolicy = Literal["round_robin", "least_request", "ring_hash", "maglev", "load_aware", "least_loaded"]


class LeastRequest(Strict):
    """Tuning of least_request: the endpoint with the fewest requests in flight among a sample."""

    choice_count: Annotated[int, Field(ge=2, le=100, description="endpoints sampled per pick (power of n choices)")] = 2
    active_request_bias: Annotated[float, Field(
        ge=0, le=10, description="with unequal endpoint weights: weight / (active requests + 1) ^ bias; "
                                 "0 ignores requests in flight")] = 1.0


class LoadAware(Strict):
    """Weights from the load every answer reports (ORCA `endpoint-load-metrics`): an endpoint's
    weight is its requests per second over its utilization, so a slower or busier replica gets
    less. Endpoints without a fresh report get the mean weight: missing or stale reports fall
    back to round robin, never to an error."""

    blackout_period_s: Annotated[float, Field(
        ge=0, le=300, description="how long an endpoint must report before its weight is used")] = 1.0
    weight_expiration_s: Annotated[float, Field(
        gt=0, le=3600, description="a weight not refreshed for this long is dropped (the endpoint gets the mean)")] = 10.0
    weight_update_period_s: Annotated[float, Field(ge=0.1, le=60, description="how often weights are recomputed")] = 1.0
    error_utilization_penalty: Annotated[float, Field(
        ge=0, le=100, description="utilization added per error-to-request ratio: failing endpoints weigh less")] = 1.0

    @model_validator(mode="after")
    def _expiry_after_blackout(self) -> LoadAware:
        if self.weight_expiration_s <= self.blackout_period_s:
            raise ValueError("weight_expiration_s must exceed blackout_period_s: weights would expire before use")
        return self


class PrefixAffinity(Strict):
    """least_loaded only: requests whose prompts start alike (the first `prefix_bytes` of the
    body's messages or prompt) go back to the replica the proxy last sent that prefix to, while
    that replica likely still holds it in its KV cache (fewer than `cached_prefixes` other
    prefixes sent there since) and is within the bound: its share of the proxy's recent picks at
    most `load_bound` times the mean share, its requests in flight at most twice that multiple of
    the mean. A prefix no such replica holds goes to the first replica in its rendezvous-hash
    order that is under its share and at or under the mean load in flight."""

    prefix_bytes: Annotated[int, Field(ge=16, le=65536, description="bytes of the prompt that make its key")] = 256
    load_bound: Annotated[float, Field(ge=1, le=10, description=(
        "a replica past this multiple of the mean share of recent picks, or past twice it in flight, "
        "is passed over"))] = 1.25
    cached_prefixes: Annotated[int, Field(ge=1, le=4096, description=(
        "distinct prompts one replica's KV cache holds (its size over a prompt's): how long the proxy "
        "counts a prefix as cached where it sent it"))] = 64


class Shedding(Strict):
    """Refuse requests of priority below 0 at the edge (429 and Retry-After, at once) while every
    replica that could serve them reports at least `queue_threshold` waiting requests (ORCA
    `named_metrics.waiting`). Priority is the `x-sluice-priority` request header, 0 when absent;
    0 and above is never refused. A report older than `report_max_age_s` counts as not full."""

    queue_threshold: Annotated[int, Field(ge=1, le=1_000_000, description="waiting requests at which a replica is full")]
    retry_after_s: Annotated[int, Field(ge=1, le=3600, description="Retry-After of the 429")] = 1
    report_max_age_s: Annotated[float, Field(
        ge=0.001, le=600, description="older load reports are ignored: shedding fails open")] = 2.0


class Backend(Strict):
    """A set of endpoints serving one model version (one Envoy cluster)."""

    endpoints: Annotated[list[Endpoint], Field(min_length=1, max_length=1024)]
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    lb_policy: Annotated[LbPolicy, Field(
        description="ring_hash and maglev hash what the route's hash_on names; load_aware weighs "
                    "endpoints by the load they report")] = "least_request"
    least_request: Annotated[LeastRequest | None, Field(description="lb_policy least_request only")] = None
    load_aware: Annotated[LoadAware | None, Field(
        description="lb_policy load_aware only; null: the defaults")] = None
    prefix_affinity: Annotated[PrefixAffinity | None, Field(description="lb_policy least_loaded only")] = None
    slow_start: Annotated[SlowStart | None, Field(description="round_robin, least_request and load_aware only")] = None
    shedding: Annotated[Shedding | None, Field(
        description="refuse low-priority requests at the edge while every replica's queue is full; "
                    "applies to routes all of whose backends set it")] = None
    outlier_detection: OutlierDetection | None = OutlierDetection()
    health_check: HealthCheck | None = None
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    idle_timeout_s: Annotated[float, Field(ge=0, le=86400, description="close idle upstream connections; 0: never")] = 60.0
    protocol: Annotated[Literal["http1", "http2"], Field(description="http2 for gRPC backends")] = "http1"

    @model_validator(mode="after")
    def _slow_start_needs_weights(self) -> Backend:
        if self.slow_start is not None and self.lb_policy not in ("round_robin", "least_request", "load_aware"):
            raise ValueError(f"slow_start works with round_robin, least_request or load_aware, not {self.lb_policy}")
        for tuning, policy in (("least_request", "least_request"), ("load_aware", "load_aware"),
                               ("prefix_affinity", "least_loaded")):
            if getattr(self, tuning) is not None and self.lb_policy != policy:
                raise ValueError(f"{tuning} is set but lb_policy is {self.lb_policy}: set lb_policy {policy}")
        return self


# Envoy's StringMatcher refuses an empty prefix or regex (an empty exact value is a value).
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class HeaderMatch(Strict):
    name: HeaderName
    exact: str | None = None
    prefix: NonEmpty | None = None
    regex: NonEmpty | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> HeaderMatch:
        _one_of(self, ("exact", "prefix", "regex", "present"))
        _check_regex(self.regex)
        return self


class QueryParameterMatch(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    exact: str | None = None
    prefix: NonEmpty | None = None
    regex: NonEmpty | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> QueryParameterMatch:
        _one_of(self, ("exact", "prefix", "regex", "present"))
        _check_regex(self.regex)
        return self


Method = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"]


class RouteMatch(Strict):
    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    headers: Annotated[list[HeaderMatch], Field(max_length=16)] = []
    methods: Annotated[list[Method], Field(max_length=9, description="any of these; empty: any method")] = []
    query_parameters: Annotated[list[QueryParameterMatch], Field(max_length=16)] = []

    @model_validator(mode="after")
    def _exactly_one(self) -> RouteMatch:
        _one_of(self, ("prefix", "path", "regex"))
        for field in ("prefix", "path"):
            value = getattr(self, field)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{field} must start with '/'")
        _check_regex(self.regex)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods names a method more than once")
        if any(h.name.lower() == ":method" for h in self.headers) and self.methods:
            raise ValueError("match :method either in headers or in methods, not both")
        return self


class WeightedBackend(Strict):
    backend: Name
    weight: Annotated[int, Field(ge=0, le=10000)] = 100


# Envoy's retry conditions that make sense for an inference backend (HTTP and gRPC ones).
RetryOn = Literal[
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "refused-stream",
    "retriable-4xx", "envoy-ratelimited",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
]


class Retries(Strict):
    """Retry a failed try; by default only failures where the backend never produced an answer."""

    num_retries: Annotated[int, Field(ge=1, le=10, description="retries after the first try")] = 2
    retry_on: Annotated[list[RetryOn], Field(min_length=1, max_length=13)] = [
        "connect-failure", "refused-stream", "unavailable", "cancelled", "reset"]
    per_try_timeout_s: Annotated[float, Field(
        gt=0, le=3600, description="how long a try may wait for the response headers (a first-byte timeout: a "
                                   "stream already answering is never cut by it); null: the route's timeout")] | None = None
    other_host: Annotated[bool, Field(description="retry on an endpoint not yet tried")] = True
    retriable_status_codes: Annotated[list[Annotated[int, Field(ge=400, le=599)]], Field(
        max_length=16, description="answers with these statuses are retried too (429 from a busy replica, say); "
                                   "only before the first response byte, as every retry")] = []

    @model_validator(mode="after")
    def _unique_conditions(self) -> Retries:
        if len(set(self.retry_on)) != len(self.retry_on):
            raise ValueError("retry_on names a condition more than once")
        if len(set(self.retriable_status_codes)) != len(self.retriable_status_codes):
            raise ValueError("retriable_status_codes names a status more than once")
        return self


class Mirror(Strict):
    """A copy of a share of the route's requests, sent to another backend; its answers are dropped."""

    backend: Name
    percent: Annotated[float, Field(gt=0, le=100)] = 100


class HashOn(Strict):
    """What a ring_hash or maglev backend hashes to keep a client on one endpoint."""

    type: Literal["header", "cookie", "query_parameter", "source_ip"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="the header, cookie or query parameter")
    cookie_ttl_s: Annotated[float, Field(
        ge=0, le=31_536_000,
        description="cookie only: Envoy sets the cookie when the request lacks it (0: a session cookie)")] | None = None
    terminal: Annotated[bool, Field(description="if this part is present, ignore the parts after it")] = False

    @model_validator(mode="after")
    def _consistent(self) -> HashOn:
        if (self.type == "source_ip") != (self.name is None):
            raise ValueError("name is required for header, cookie and query_parameter, and only for them")
        if self.type == "header" and re.fullmatch(r":?[A-Za-z0-9!#$%&'*+.^_`|~-]+", self.name or "") is None:
            raise ValueError(f"invalid header name {self.name!r}")
        if self.cookie_ttl_s is not None and self.type != "cookie":
            raise ValueError("cookie_ttl_s is only for type cookie")
        return self


class Route(Strict):
    name: Name
    match: RouteMatch
    split: Annotated[list[WeightedBackend], Field(min_length=1, max_length=32)]
    timeout_s: Annotated[float, Field(ge=0, le=3600, description="0 disables the route timeout")] = 30.0
    idle_timeout_s: Annotated[float, Field(
        ge=0, le=3600, description="longest silence on a request or response stream; 0 disables; "
                                   "null: the listener's default (5 minutes)")] | None = None
    retries: Retries | None = Retries()
    mirrors: Annotated[list[Mirror], Field(max_length=4)] = []
    hash_on: Annotated[list[HashOn], Field(max_length=4)] = []
    sticky_split: bool = Field(
        False, description="choose the split's backend by hashing hash_on instead of at random, "
                           "so one user stays on one backend (sticky canaries, A/B tests)")

    @model_validator(mode="after")
    def _split_is_usable(self) -> Route:
        if self.sticky_split and not self.hash_on:
            raise ValueError("sticky_split needs hash_on: what identifies a user")
        names = [w.backend for w in self.split]
        if len(set(names)) != len(names):
            raise ValueError("split names a backend more than once")
        if sum(w.weight for w in self.split) == 0:
            raise ValueError("split weights add up to 0: at least one backend needs weight")
        mirrored = [m.backend for m in self.mirrors]
        if len(set(mirrored)) != len(mirrored):
            raise ValueError("mirrors names a backend more than once")
        per_try = self.retries.per_try_timeout_s if self.retries else None
        if per_try is not None and self.timeout_s and per_try > self.timeout_s:
            raise ValueError(f"retries.per_try_timeout_s {per_try} exceeds timeout_s {self.timeout_s}")
        return self

    def backends_named(self) -> list[tuple[str, str]]:
        """Every backend the route names, with the field naming it relative to the route
        (`split.1.backend`, `mirrors.0.backend`), for cross-object checks."""
        return ([(f"split.{i}.backend", w.backend) for i, w in enumerate(self.split)]
                + [(f"mirrors.{i}.backend", m.backend) for i, m in enumerate(self.mirrors)])


class Service(Strict):
    """A virtual host: the hosts it answers for and its routes, matched in order."""

    hosts: Annotated[list[Host], Field(min_length=1, max_length=64)] = ["*"]
    routes: Annotated[list[Route], Field(min_length=1, max_length=1000)]

    @model_validator(mode="after")
    def _unique_routes(self) -> Service:
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique within a service")
        return self


class KeyPart(Strict):
    """One part of a rate-limit key: the client's IP, a request header's value, or the route."""

    type: Literal["client_ip", "header", "route"]
    name: FilterHeaderName | None = Field(None, description="the header, for type header")

    @model_validator(mode="after")
    def _name_for_headers(self) -> KeyPart:
        if (self.type == "header") != (self.name is not None):
            raise ValueError("name is required for type header and only for it")
        return self


class RateLimit(Strict):
    """A token bucket per key, enforced inside each edge Envoy by the ratelimit WASM filter."""

    service: Name
    routes: Annotated[list[Name], Field(
        max_length=limits.RATELIMIT_ROUTES_MAX, description="routes of the service; empty: all")] = []
    rate: Annotated[float, Field(ge=limits.RATE_MIN, le=limits.RATE_MAX, description="tokens added per second")]
    burst: Annotated[int, Field(ge=1, le=limits.BURST_MAX, description="bucket size")]
    key: Annotated[list[KeyPart], Field(max_length=limits.RATELIMIT_DESCRIPTORS_MAX)] = [KeyPart(type="client_ip")]
    cost_header: FilterHeaderName | None = Field(None, description="a request header carrying the request's cost")
    route_costs: Annotated[dict[Name, Annotated[int, Field(ge=1)]], Field(
        max_length=limits.RATELIMIT_ROUTE_COSTS_MAX)] = {}
    shadow: bool = Field(False, description="count what would be limited, never reject")
    ipv6_prefix_len: Annotated[int, Field(
        ge=1, le=128, description="an IPv6 client is keyed by its network of this length (a host commonly holds "
                                  "a whole /64, so a longer prefix lets it mint identities); IPv4 clients by address")
    ] = limits.RATELIMIT_IPV6_PREFIX_LEN_DEFAULT
    scope: Literal["local", "global"] = Field(
        "local",
        description="local: every edge Envoy admits rate/burst on its own; global: all edge Envoys together "
                    "admit about rate/burst, each enforcing a share that follows its measured demand",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RateLimit:
        if len(set(self.routes)) != len(self.routes):
            raise ValueError("routes names a route more than once")
        kinds = [(k.type, k.name) for k in self.key]
        if len(set(kinds)) != len(kinds):
            raise ValueError("key names a part more than once")
        if self.burst / self.rate > 1e9:
            raise ValueError("burst / rate exceeds 1e9 seconds")
        for route, cost in self.route_costs.items():
            if cost > self.burst:
                raise ValueError(f"route_costs.{route} is {cost}, more than the burst {self.burst}: never admitted")
        return self


class Edge(Strict):
    """Settings of the edge proxies themselves. One object, named `edge`."""

    xff_trusted_hops: Annotated[int, Field(
        ge=0, le=limits.TRUSTED_HOPS_MAX,
        description="proxies in front of the edge that append to X-Forwarded-For and are trusted; "
                    "0: the client is the connection's peer",
    )] = 0

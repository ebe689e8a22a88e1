"""Traffic policy as operators write it: backends, services, routes and weighted splits.

Field-level rules live on the models (pydantic reports them with their path); rules that
span objects (a route naming a backend that does not exist) live in `Policy.problems`,
which reports the same way, so every rejection names the field that caused it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
    Field(description="lower-case letters, digits and '-', 1-63 characters"),
]
HeaderName = Annotated[str, StringConstraints(pattern=r"^:?[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")]
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
    address: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)]
    weight: Annotated[int, Field(ge=1, le=128)] = 1


class Backend(Strict):
    """A set of endpoints serving one model version (one Envoy cluster)."""

    endpoints: Annotated[list[Endpoint], Field(min_length=1, max_length=1024)]
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0


class HeaderMatch(Strict):
    name: HeaderName
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> HeaderMatch:
        _one_of(self, ("exact", "prefix", "regex", "present"))
        _check_regex(self.regex)
        return self


class RouteMatch(Strict):
    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    headers: Annotated[list[HeaderMatch], Field(max_length=16)] = []

    @model_validator(mode="after")
    def _exactly_one(self) -> RouteMatch:
        _one_of(self, ("prefix", "path", "regex"))
        for field in ("prefix", "path"):
            value = getattr(self, field)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{field} must start with '/'")
        _check_regex(self.regex)
        return self


class WeightedBackend(Strict):
    backend: Name
    weight: Annotated[int, Field(ge=0, le=10000)] = 100


class Route(Strict):
    name: Name
    match: RouteMatch
    split: Annotated[list[WeightedBackend], Field(min_length=1, max_length=32)]
    timeout_s: Annotated[float, Field(ge=0, le=3600, description="0 disables the route timeout")] = 30.0

    @model_validator(mode="after")
    def _split_is_usable(self) -> Route:
        names = [w.backend for w in self.split]
        if len(set(names)) != len(names):
            raise ValueError("split names a backend more than once")
        if sum(w.weight for w in self.split) == 0:
            raise ValueError("split weights add up to 0: at least one backend needs weight")
        return self


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
    name: HeaderName | None = Field(None, description="the header, for type header")

    @model_validator(mode="after")
    def _name_for_headers(self) -> KeyPart:
        if (self.type == "header") != (self.name is not None):
            raise ValueError("name is required for type header and only for it")
        return self


class RateLimit(Strict):
    """A token bucket per key, enforced inside each edge Envoy by the ratelimit WASM filter."""

    service: Name
    routes: Annotated[list[Name], Field(max_length=16, description="routes of the service; empty: all")] = []
    rate: Annotated[float, Field(gt=0, le=1e9, description="tokens added per second")]
    burst: Annotated[int, Field(ge=1, le=1_000_000_000, description="bucket size")]
    key: Annotated[list[KeyPart], Field(max_length=4)] = [KeyPart(type="client_ip")]
    cost_header: HeaderName | None = Field(None, description="a request header carrying the request's cost")
    route_costs: Annotated[dict[Name, Annotated[int, Field(ge=1)]], Field(max_length=16)] = {}
    shadow: bool = Field(False, description="count what would be limited, never reject")

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
        ge=0, le=16,
        description="proxies in front of the edge that append to X-Forwarded-For and are trusted; "
                    "0: the client is the connection's peer",
    )] = 0


class Problem(Strict):
    """A rule broken across objects, reported like a pydantic error: a dotted path and why."""

    loc: str
    msg: str


MAX_RATELIMITS = 16  # the filter's fixed policy table


class Policy(Strict):
    backends: dict[Name, Backend] = {}
    services: dict[Name, Service] = {}
    ratelimits: dict[Name, RateLimit] = {}
    edges: dict[Name, Edge] = {}

    @property
    def edge(self) -> Edge:
        return self.edges.get("edge", Edge())

    def routes_of(self, service: str, names: list[str]) -> list[str]:
        """Route names of a service as Envoy knows them (`service/route`); no names: all of them."""
        chosen = names or [r.name for r in self.services[service].routes]
        return [f"{service}/{r}" for r in chosen]

    def problems(self) -> list[Problem]:
        found: list[Problem] = []
        owner_of_host: dict[str, str] = {}
        for sname, service in sorted(self.services.items()):
            for h, host in enumerate(service.hosts):
                other = owner_of_host.setdefault(host.lower(), sname)
                if other != sname:
                    found.append(Problem(loc=f"services.{sname}.hosts.{h}",
                                         msg=f"host {host!r} is already served by service {other!r}"))
            for r, route in enumerate(service.routes):
                for s, weighted in enumerate(route.split):
                    if weighted.backend not in self.backends:
                        found.append(Problem(loc=f"services.{sname}.routes.{r}.split.{s}.backend",
                                             msg=f"unknown backend {weighted.backend!r}"))
        for name in self.edges:
            if name != "edge":
                found.append(Problem(loc=f"edges.{name}", msg="the Edge object must be named 'edge'"))
        if len(self.ratelimits) > MAX_RATELIMITS:
            found.append(Problem(loc="ratelimits", msg=f"at most {MAX_RATELIMITS} rate limits (the filter's table)"))
        for name, limit in sorted(self.ratelimits.items()):
            service = self.services.get(limit.service)
            if service is None:
                found.append(Problem(loc=f"ratelimits.{name}.service", msg=f"unknown service {limit.service!r}"))
                continue
            known = {r.name for r in service.routes}
            for i, route in enumerate(limit.routes):
                if route not in known:
                    found.append(Problem(loc=f"ratelimits.{name}.routes.{i}",
                                         msg=f"service {limit.service!r} has no route {route!r}"))
            for route in limit.route_costs:
                if route not in known:
                    found.append(Problem(loc=f"ratelimits.{name}.route_costs.{route}",
                                         msg=f"service {limit.service!r} has no route {route!r}"))
            if not limit.routes and len(known) > 16:
                found.append(Problem(loc=f"ratelimits.{name}.routes",
                                     msg="the service has more than 16 routes: name at most 16"))
        return found

    def users_of_service(self, service: str) -> list[str]:
        return [f"ratelimits.{n}" for n, limit in sorted(self.ratelimits.items()) if limit.service == service]

    def users_of_backend(self, backend: str) -> list[str]:
        return [f"services.{s}.routes.{r.name}" for s, svc in sorted(self.services.items())
                for r in svc.routes if any(w.backend == backend for w in r.split)]

"""Models routed from the request body, translated.

- The llm filter's plugin configuration (filters/llm/config.zig): the entry routes (routes whose
  POST bodies name a model), and per public model name its targets, one per backend, each with
  its weight, the `x-sluice-model` value the filter sets, and the name to write into the body.
- Per entry route, one copy per (Model, backend), placed before it, that also matches that
  header and goes to the backend (or to its fallback cluster). The copies keep the route's name,
  so rate limits and metrics keyed on `service/route` see one route. Entry routes and copies let
  Envoy hold a body of up to MAX_BODY_BYTES while the filter reads it.
- One fallback cluster per (Model, backend) with fallbacks, `model.<Model>.<backend>`: the
  backend's endpoints at priority 0, each fallback's at the next priority (as geo routing does).
- `GET /v1/models` on each service with models: answered by Envoy from the policy.
- API keys: once any Tenant exists, the entry routes and `/v1/models` need a key; the filter
  gets each key's SHA-256 and tenant (never a key), and the model routes drop the
  Authorization header, so keys go no further than the edge. A key's priority (its own, else
  its tenant's) replaces the request's `x-sluice-priority`, which the picker sheds on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import DataSource, HeaderValue, HeaderValueOption
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_components_pb2 import (
    DirectResponseAction,
    HeaderMatcher,
    Route,
    RouteMatch,
    VirtualHost,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf.wrappers_pb2 import UInt64Value

from controlplane.policy import Policy
from controlplane.policy.ai import MAX_BODY_BYTES, WINDOW_S, Model
from controlplane.translate.clusters import cluster
from controlplane.translate.endpoints import load_assignment
from controlplane.translate.routes import route_name

MODEL_HEADER = "x-sluice-model"
MODELS_PATH = "/v1/models"
# Envoy's own limit stays above the filter's, so a body over the limit gets the filter's
# OpenAI-shaped 413 rather than Envoy's plain one.
BUFFER_LIMIT_BYTES = MAX_BODY_BYTES + 1024 * 1024


def target_header(model: str, backend: str) -> str:
    return f"{model}/{backend}"


def fallback_cluster_name(model: str, backend: str) -> str:
    # Dots cannot appear in policy names, so these never collide with a backend's cluster.
    return f"model.{model}.{backend}"


def _models_route_name(service: str) -> str:
    return route_name(service, "models")


# A day or month budget's nominal length, for the RateLimit-Policy header only: the window itself
# comes from the control plane (controlplane/quota/keeper.py).
LONG_WINDOW_S = {"day": 86_400, "month": 30 * 86_400}


@dataclass(frozen=True)
class Allowance:
    """One proxy's part of a global (day or month) budget, from the usage keeper."""

    window_id: int  # a new id (a new window, or a new split of what is left) restarts the proxy's count
    tokens: int  # what this proxy may admit under this id
    window_end_s: int  # when the window ends, Unix seconds
    window_used: int = 0  # tokens used of the window, every proxy's, when this was given (for the soft limit)


# Before the keeper's first allowance a proxy admits nothing of a global budget: it cannot know
# what is left of the window. The keeper sends one as soon as the proxy connects.
NO_ALLOWANCE = Allowance(window_id=1, tokens=0, window_end_s=0)


def _window(per: str, allowance: Allowance | None) -> dict[str, int]:
    if per in WINDOW_S:
        return {"window_s": WINDOW_S[per]}
    a = allowance or NO_ALLOWANCE
    return {"window_s": LONG_WINDOW_S[per], "window_id": a.window_id, "allowance": a.tokens,
            "window_end_s": a.window_end_s, "window_used": a.window_used}


def _priority(key: int | None, tenant: int | None) -> dict[str, int]:
    """The key's priority, else its tenant's; none: the client's header goes through."""
    chosen = key if key is not None else tenant
    return {} if chosen is None else {"priority": chosen}


def llm_config(policy: Policy, allowances: Mapping[str, Allowance] | None = None) -> dict[str, object]:
    """The filter's plugin configuration; `allowances`: this proxy's, per day or month budget."""
    allowances = allowances or {}
    entries = sorted({route_name(m.service, r) for m in policy.models.values() for r in m.routes})
    keyed = sorted({*entries, *(_models_route_name(m.service) for m in policy.models.values())}) if policy.tenants else []
    return {
        "auth_routes": keyed,
        "keys": [{"sha256": key.sha256, "tenant": name, **_priority(key.priority, tenant.priority)}
                 for name, tenant in sorted(policy.tenants.items()) for key in tenant.keys],
        "budgets": [
            {"name": name, "tenant": b.tenant, **({"model": b.model} if b.model is not None else {}),
             "tokens": b.tokens, **_window(b.per, allowances.get(name)), "default_max_tokens": b.default_max_tokens,
             "shadow": b.shadow, "soft_limit_percent": b.soft_limit_percent or 0}
            for name, b in sorted(policy.tokenbudgets.items())
        ],
        "max_body_bytes": MAX_BODY_BYTES,
        "routes": entries,
        "models": [
            {
                "service": model.service,
                "name": model.model,
                "targets": [
                    {"header": target_header(name, b.backend), "weight": b.weight,
                     **({"rewrite": b.model} if b.model is not None else {})}
                    for b in model.backends
                ],
            }
            for name, model in sorted(policy.models.items())
        ],
    }


def fallback_clusters(policy: Policy) -> list[Cluster]:
    return [cluster(fallback_cluster_name(name, b.backend), policy.backends[b.backend])
            for name, model in sorted(policy.models.items()) if model.fallback
            for b in model.backends]


def fallback_assignments(policy: Policy) -> list[ClusterLoadAssignment]:
    out = []
    for name, model in sorted(policy.models.items()):
        if not model.fallback:
            continue
        for b in model.backends:
            assignment = ClusterLoadAssignment(cluster_name=fallback_cluster_name(name, b.backend))
            for priority, backend in enumerate([b.backend, *model.fallback]):
                (level,) = load_assignment(backend, policy.backends[backend]).endpoints
                level.priority = priority
                assignment.endpoints.append(level)
            out.append(assignment)
    return out


def _models_route(service: str, models: list[Model]) -> Route:
    listing = {"object": "list", "data": [
        {"id": m.model, "object": "model", "created": 0, "owned_by": m.owned_by}
        for m in sorted(models, key=lambda m: m.model)]}
    return Route(
        name=_models_route_name(service),
        match=RouteMatch(path=MODELS_PATH, headers=[
            HeaderMatcher(name=":method", string_match=StringMatcher(exact="GET"))]),
        direct_response=DirectResponseAction(
            status=200, body=DataSource(inline_string=json.dumps(listing, separators=(",", ":")))),
        response_headers_to_add=[HeaderValueOption(
            header=HeaderValue(key="content-type", value="application/json"),
            append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)],
    )


def _target_route(entry: Route, name: str, model: Model, backend: str, keyed: bool) -> Route:
    route = Route()
    route.CopyFrom(entry)
    route.match.headers.append(HeaderMatcher(
        name=MODEL_HEADER, string_match=StringMatcher(exact=target_header(name, backend))))
    # Replaces the weighted split: the filter chose the backend.
    route.route.cluster = fallback_cluster_name(name, backend) if model.fallback else backend
    route.route.ClearField("hash_policy")
    route.request_headers_to_remove.append(MODEL_HEADER)
    if keyed:
        route.request_headers_to_remove.append("authorization")
    return route


def _with_models(vhost: VirtualHost, policy: Policy) -> None:
    models = sorted((n, m) for n, m in policy.models.items() if m.service == vhost.name)
    if not models:
        return
    routes = list(vhost.routes)
    for route_short in sorted({r for _, m in models for r in m.routes}):
        named = [i for i, r in enumerate(routes) if r.name == route_name(vhost.name, route_short)]
        # The route as the policy wrote it is the last of its name; copies before it (geo
        # routing's per region) would catch a request before the model routes otherwise.
        base = routes[named[-1]]
        copies = [_target_route(base, n, m, b.backend, bool(policy.tenants))
                  for n, m in models if route_short in m.routes for b in m.backends]
        for i in named:
            routes[i].request_body_buffer_limit.CopyFrom(UInt64Value(value=BUFFER_LIMIT_BYTES))
        for route in copies:
            route.request_body_buffer_limit.CopyFrom(UInt64Value(value=BUFFER_LIMIT_BYTES))
        routes[named[0]:named[0]] = copies
    del vhost.routes[:]
    vhost.routes.extend([_models_route(vhost.name, [m for _, m in models]), *routes])


def with_model_routes(config: RouteConfiguration, policy: Policy) -> RouteConfiguration:
    """`config` with each entry route preceded by its model routes, and `/v1/models` first in
    every virtual host that serves models."""
    if not policy.models:
        return config
    out = RouteConfiguration()
    out.CopyFrom(config)
    for vhost in out.virtual_hosts:
        _with_models(vhost, policy)
    return out

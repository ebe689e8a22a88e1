"""In-proxy picking and priority shedding, translated: the picker filter's plugin configuration
(filters/picker/config.zig), for the edge chain and for the upstream filters of least_loaded
clusters (there the filter only records: it sees every try, retried ones included).

A route gets an entry when
- its split can choose exactly one backend (weight above 0) and that backend is least_loaded:
  the filter picks the endpoint (with prefix affinity when the backend sets it);
- every backend its split can choose sets `shedding`: the filter sheds priority < 0.
Endpoints are written as Envoy prints upstream addresses (`ip:port`, `[ipv6]:port`), since the
filter keys what it learns by them.
"""

from __future__ import annotations

import ipaddress

from controlplane.policy import Policy
from controlplane.policy.model import Backend, Endpoint, Route
from controlplane.translate.clusters import ENDPOINT_HEADER
from controlplane.translate.routes import route_name

# The generative backend schedules on the same header: one priority, from the edge to the batch.
PRIORITY_HEADER = "x-sluice-priority"
# How old a report may be for picking when no Shedding says otherwise.
REPORT_MAX_AGE_S = 2.0


def upstream_address(endpoint: Endpoint) -> str:
    ip = ipaddress.ip_address(endpoint.address)
    return f"[{ip.compressed}]:{endpoint.port}" if ip.version == 6 else f"{ip.compressed}:{endpoint.port}"


def _entry(name: str, backends: list[Backend]) -> dict[str, object] | None:
    picked = backends[0] if len(backends) == 1 and backends[0].lb_policy == "least_loaded" else None
    shed = [b.shedding for b in backends if b.shedding is not None] if all(b.shedding for b in backends) else []
    if picked is None and not shed:
        return None
    affinity = picked.prefix_affinity if picked is not None else None
    thresholds = {upstream_address(e): (b.shedding.queue_threshold if shed and b.shedding else 0)
                  for b in backends for e in b.endpoints}
    return {
        "route": name,
        "max_age_ms": max(1, round(min([s.report_max_age_s for s in shed] or [REPORT_MAX_AGE_S]) * 1000)),
        "pick": picked is not None,
        "prefix_bytes": affinity.prefix_bytes if affinity else 0,
        "load_bound_pct": round((affinity.load_bound if affinity else 1.25) * 100),
        "cached_prefixes": affinity.cached_prefixes if affinity else 64,
        "shed_retry_after_s": max((s.retry_after_s for s in shed), default=0),
        "endpoints": [{"address": a, "threshold": t} for a, t in sorted(thresholds.items())],
    }


def _chosen(policy: Policy, route: Route) -> list[Backend]:
    return [policy.backends[w.backend] for w in route.split if w.weight > 0]


def picker_config(policy: Policy) -> dict[str, object] | None:
    """The edge chain's instance; None when no route needs it: the filter is left out."""
    if not any(b.lb_policy == "least_loaded" or b.shedding is not None for b in policy.backends.values()):
        return None  # no route's backends pick or shed: not worth a look at every route
    routes = [entry for sname, service in sorted(policy.services.items()) for route in service.routes
              if (entry := _entry(route_name(sname, route.name), _chosen(policy, route))) is not None]
    if not routes:
        return None
    return {"priority_header": PRIORITY_HEADER, "endpoint_header": ENDPOINT_HEADER, "routes": routes}


def picker_upstream_config(policy: Policy) -> dict[str, object] | None:
    """The least_loaded clusters' instance: the edge chain's configuration (both plugins share a
    VM, and with it one configuration; the filter tells them apart itself). None when there is
    no such cluster."""
    if not any(b.lb_policy == "least_loaded" for b in policy.backends.values()):
        return None
    return picker_config(policy) or {"priority_header": PRIORITY_HEADER, "endpoint_header": ENDPOINT_HEADER, "routes": []}


def reads_prompts(config: dict[str, object]) -> bool:
    """Whether some route's picking reads the request body (prefix affinity)."""
    routes = config["routes"]
    assert isinstance(routes, list)
    return any(r["prefix_bytes"] for r in routes)

"""Priority shedding, translated: the shed filter's plugin configuration (filters/shed/config.zig).

A route is shed-aware when every backend its split can choose (weight above 0) sets `shedding`;
its entry lists every endpoint of those backends with that backend's queue threshold, as Envoy
prints upstream addresses (`ip:port`, `[ipv6]:port`), since the filter keys reports by them.
"""

from __future__ import annotations

import ipaddress

from controlplane.policy import Policy
from controlplane.policy.model import Endpoint
from controlplane.translate.routes import route_name

# The generative backend schedules on the same header: one priority, from the edge to the batch.
PRIORITY_HEADER = "x-sluice-priority"


def upstream_address(endpoint: Endpoint) -> str:
    ip = ipaddress.ip_address(endpoint.address)
    return f"[{ip.compressed}]:{endpoint.port}" if ip.version == 6 else f"{ip.compressed}:{endpoint.port}"


def shed_config(policy: Policy) -> dict[str, object] | None:
    """None when no route is shed-aware: the filter is left out."""
    routes: list[dict[str, object]] = []
    for sname, service in sorted(policy.services.items()):
        for route in service.routes:
            backends = [policy.backends[w.backend] for w in route.split if w.weight > 0]
            settings = [b.shedding for b in backends]
            if not backends or any(s is None for s in settings):
                continue
            endpoints = {upstream_address(e): b.shedding.queue_threshold
                         for b in backends if b.shedding is not None for e in b.endpoints}
            chosen = [s for s in settings if s is not None]
            routes.append({
                "route": route_name(sname, route.name),
                "retry_after_s": max(s.retry_after_s for s in chosen),
                "max_age_ms": max(1, round(min(s.report_max_age_s for s in chosen) * 1000)),
                "endpoints": [{"address": a, "threshold": t} for a, t in sorted(endpoints.items())],
            })
    if not routes:
        return None
    return {"priority_header": PRIORITY_HEADER, "routes": routes}

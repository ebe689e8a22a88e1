"""Policy → Envoy resources. A pure function: no store, no stream, no clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.groups import SIDECAR, ProxyGroup
from controlplane.policy import Policy
from controlplane.resources import CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SCOPED_ROUTE, Resources
from controlplane.translate.clusters import clusters
from controlplane.translate.endpoints import load_assignments
from controlplane.translate.filters import edge_filters
from controlplane.translate.geo import TableLookup, failover_assignments, failover_clusters, with_geo_routes
from controlplane.translate.listeners import edge_listener
from controlplane.translate.llm import Allowance, fallback_assignments, fallback_clusters, with_model_routes
from controlplane.translate.routes import (
    MadeRoutes,
    route_configuration,
    route_name,
    scopable,
    scopes,
    service_route_configurations,
)
from controlplane.translate.sidecar import sidecar_resources
from controlplane.translate.tracing import with_tracing


@dataclass(frozen=True)
class Options:
    """What the translator needs to know besides the policy."""

    filters_dir: Path = Path("build/filters/bin")  # compiled WASM filters, as Envoy will read them
    # Uploaded geo tables by digest (controlplane.geo.tables.GeoTables.get): content-addressed,
    # so translating stays a function of the policy.
    geo_tables: TableLookup = field(default=lambda _: None)
    # Route configurations of services a write left unchanged, kept between translations
    # (None: everything is made afresh). It changes no output, only how much is recomputed.
    made_routes: MadeRoutes | None = None


def translate(policy: Policy, group: ProxyGroup, options: Options = Options()) -> Resources:
    if group.role == SIDECAR:
        assert group.local_backend is not None  # checked when the group was made
        return with_tracing(sidecar_resources(policy, (group.listen_address, group.listen_port),
                                              group.local_backend, group.outbound_port), policy, group.role)
    http_filters, filter_configs = edge_filters(policy, options.filters_dir, geo_tables=options.geo_tables)
    scoped = scopable(policy)
    listener = edge_listener(group.listen_address, group.listen_port, http_filters, scoped=scoped)
    routes = [with_model_routes(with_geo_routes(r, policy), policy)
              for r in (service_route_configurations(policy, options.made_routes) if scoped else [route_configuration(policy)])]
    return with_tracing({
        CLUSTER: {c.name: c for c in [*clusters(policy), *failover_clusters(policy), *fallback_clusters(policy)]},
        ENDPOINT: {a.cluster_name: a for a in [*load_assignments(policy), *failover_assignments(policy),
                                               *fallback_assignments(policy)]},
        EXTENSION_CONFIG: {c.name: c for c in filter_configs},
        LISTENER: {listener.name: listener},
        SCOPED_ROUTE: {s.name: s for s in (scopes(policy) if scoped else [])},
        ROUTE: {r.name: r for r in routes},
    }, policy, group.role)


def translate_shares(policy: Policy, shares: Mapping[str, float], options: Options = Options(),
                     allowances: Mapping[str, Allowance] | None = None) -> Resources:
    """What differs for one proxy holding `shares` of the global rate limits and `allowances`
    of the global token budgets: its filter configs."""
    _, filter_configs = edge_filters(policy, options.filters_dir, shares, options.geo_tables, allowances)
    return {EXTENSION_CONFIG: {c.name: c for c in filter_configs}}


__all__ = ["Allowance", "MadeRoutes", "Options", "ProxyGroup", "Resources", "route_name", "translate", "translate_shares"]

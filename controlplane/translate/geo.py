"""Geo routing, translated.

- The georoute filter's plugin configuration: the table and its settings as bytes
  (controlplane/geotable/compact.py), sent by ECDS (translate/filters.py), so a new table changes
  only that resource: no listener drain.
- One failover cluster per geo-routed region, `geo.<georoute>.<region>`: the region's backend's
  endpoints at priority 0, each fallback region's backend's at the next priority, actively health
  checked with the region backend's settings. Envoy sends a priority's share of traffic on to the
  next one as its hosts fail their checks (all of it once none is healthy, with the default
  overprovisioning factor 1.4), and takes it back as they recover: no control-plane action.
- Per region, a copy of the route it refines, placed before it, that also matches the region
  header and goes to the region's failover cluster. Its retries move to the next priority
  (previous_priorities), so requests caught by a failure before the health checks notice it are
  retried in the fallback region. The copies keep the route's name: rate limits and metrics
  keyed on `service/route` see one route.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_components_pb2 import HeaderMatcher, RetryPolicy, Route
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2 import (
    PreviousPrioritiesConfig,
)
from envoy.type.matcher.v3.string_pb2 import StringMatcher

from controlplane.geotable.compact import Settings, filter_config, settings
from controlplane.geotable.table import GeoTable, inline_table
from controlplane.policy import Policy
from controlplane.policy.geo import Geo
from controlplane.translate.clusters import cluster, packed
from controlplane.translate.endpoints import load_assignment
from controlplane.translate.routes import route_name

# An uploaded table by its digest, or None while it is not in memory.
TableLookup = Callable[[str], GeoTable | None]


def failover_cluster_name(georoute: str, region: str) -> str:
    # Dots cannot appear in policy names, so these never collide with a backend's cluster.
    return f"geo.{georoute}.{region}"


def _table(geo: Geo, tables: TableLookup) -> tuple[GeoTable, str] | None:
    if geo.table is None:
        return inline_table(tuple(geo.prefixes))
    table = tables(geo.table)
    return None if table is None else (table, geo.table)


@lru_cache(maxsize=4)
def _configuration(table: GeoTable, digest: str, filter_settings: Settings) -> bytes:
    # A table is megabytes: write its configuration once per (table, settings), not per proxy
    # group or per share update (the same bytes object also keeps its hash cached).
    return filter_config(table, filter_settings, digest)


def georoute_configuration(policy: Policy, geo: Geo, tables: TableLookup) -> bytes | None:
    """The filter's plugin configuration; None while an uploaded table is not in memory."""
    found = _table(geo, tables)
    if found is None:
        return None
    return _configuration(*found, settings(policy, geo))


def failover_clusters(policy: Policy) -> list[Cluster]:
    return [cluster(failover_cluster_name(name, region), policy.backends[target.backend])
            for name, geo_route in sorted(policy.georoutes.items())
            for region, target in sorted(geo_route.regions.items())]


def failover_assignments(policy: Policy) -> list[ClusterLoadAssignment]:
    out = []
    for name, geo_route in sorted(policy.georoutes.items()):
        for region in sorted(geo_route.regions):
            assignment = ClusterLoadAssignment(cluster_name=failover_cluster_name(name, region))
            for priority, backend in enumerate(geo_route.chain(region)):
                (level,) = load_assignment(backend, policy.backends[backend]).endpoints
                level.priority = priority
                assignment.endpoints.append(level)
            out.append(assignment)
    return out


def _next_priority_on_retry() -> RetryPolicy.RetryPriority:
    return RetryPolicy.RetryPriority(name="envoy.retry_priorities.previous_priorities",
                                     typed_config=packed(PreviousPrioritiesConfig(update_frequency=1)))


def with_geo_routes(config: RouteConfiguration, policy: Policy) -> RouteConfiguration:
    """`config` with each geo-routed route preceded by its per-region copies."""
    geo = policy.geo.get("geo")
    if geo is None or not policy.georoutes:
        return config
    out = RouteConfiguration()
    out.CopyFrom(config)
    for name, geo_route in sorted(policy.georoutes.items()):
        vhosts = [v for v in out.virtual_hosts if v.name == geo_route.service]
        if not vhosts:
            continue  # another service's route configuration (routes scoped per service)
        (vhost,) = vhosts
        base_name = route_name(geo_route.service, geo_route.route)
        (at,) = [i for i, r in enumerate(vhost.routes) if r.name == base_name]
        base = vhost.routes[at]
        regional = []
        for region in sorted(geo_route.regions):
            route = Route()
            route.CopyFrom(base)
            route.match.headers.append(HeaderMatcher(name=geo.region_header, string_match=StringMatcher(exact=region)))
            route.route.cluster = failover_cluster_name(name, region)  # replaces the weighted split
            route.route.ClearField("hash_policy")  # it chose among the split's backends
            if route.route.HasField("retry_policy"):
                route.route.retry_policy.retry_priority.CopyFrom(_next_priority_on_retry())
            regional.append(route)
        routes = list(vhost.routes)
        del vhost.routes[:]
        vhost.routes.extend(routes[:at] + regional + routes[at:])
    return out

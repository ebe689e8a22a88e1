"""The check every snapshot passes before any proxy sees it.

Policy validation already refuses dangling references, so a failure here means the translator
produced something Envoy would half-apply: routes to a missing cluster answer 503 (NC), an EDS
cluster without endpoints waits for its load assignment. Such a snapshot is not published.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.scoped_route_pb2 import ScopedRouteConfiguration
from google.protobuf.message import Message

from controlplane.cache.references import clusters_used, managers
from controlplane.resources import CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SCOPED_ROUTE


def problems(resources: Mapping[str, Mapping[str, Message]]) -> list[str]:
    """What is inconsistent in one proxy group's resources; empty when they can be pushed."""
    clusters = resources.get(CLUSTER, {})
    found: list[str] = []
    for type_url in (LISTENER, ROUTE):
        for name, message in sorted(resources.get(type_url, {}).items()):
            found.extend(f"{name} routes to cluster {c!r}, which does not exist"
                         for c in sorted(clusters_used(message) - clusters.keys()))
    for name, scope in sorted(resources.get(SCOPED_ROUTE, {}).items()):
        assert isinstance(scope, ScopedRouteConfiguration)
        if scope.route_configuration_name not in resources.get(ROUTE, {}):
            found.append(f"scope {name} uses route configuration {scope.route_configuration_name!r}, "
                         "which does not exist")
    for name, cluster in sorted(clusters.items()):
        assert isinstance(cluster, Cluster)
        if cluster.type == Cluster.EDS and name not in resources.get(ENDPOINT, {}):
            found.append(f"EDS cluster {name!r} has no ClusterLoadAssignment")
    for name, listener in sorted(resources.get(LISTENER, {}).items()):
        assert isinstance(listener, Listener)
        for hcm in managers(listener):
            if hcm.HasField("rds") and hcm.rds.route_config_name not in resources.get(ROUTE, {}):
                found.append(f"listener {name} uses route configuration {hcm.rds.route_config_name!r}, "
                             "which does not exist")
            if hcm.HasField("scoped_routes") and not resources.get(SCOPED_ROUTE):
                found.append(f"listener {name} uses scoped routes, and there is no scope")
            found.extend(f"listener {name} discovers filter {f.name!r}, which has no config"
                         for f in hcm.http_filters
                         if f.HasField("config_discovery") and f.name not in resources.get(EXTENSION_CONFIG, {}))
    return found

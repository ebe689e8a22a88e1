"""Which clusters a listener or route configuration sends traffic to.

The session keeps a removed cluster on a proxy while the routes it runs still use one, and the
consistency check refuses a snapshot whose routes use a cluster it lacks; both read this.
"""

from __future__ import annotations

from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from google.protobuf.message import Message

HCM = HttpConnectionManager.DESCRIPTOR.full_name


def _route_clusters(config: RouteConfiguration) -> set[str]:
    used: set[str] = set()
    for vhost in config.virtual_hosts:
        for route in vhost.routes:
            if not route.HasField("route"):
                continue  # a redirect or direct response uses no cluster
            action = route.route
            if action.cluster:
                used.add(action.cluster)
            used.update(w.name for w in action.weighted_clusters.clusters)
            used.update(m.cluster for m in action.request_mirror_policies)
    return used


def managers(listener: Listener) -> list[HttpConnectionManager]:
    """The listener's HTTP connection managers, unpacked."""
    out: list[HttpConnectionManager] = []
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.typed_config.TypeName() == HCM:
                hcm = HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                out.append(hcm)
    return out


def clusters_used(message: Message) -> frozenset[str]:
    """Clusters a Listener (through inline routes) or RouteConfiguration routes to; none for other types."""
    if isinstance(message, RouteConfiguration):
        return frozenset(_route_clusters(message))
    if isinstance(message, Listener):
        used: set[str] = set()
        for hcm in managers(message):
            if hcm.HasField("route_config"):
                used |= _route_clusters(hcm.route_config)
        return frozenset(used)
    return frozenset()

"""Listeners: the edge's public one, and a sidecar's inbound and outbound ones."""

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import Route, RouteAction, RouteMatch, VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
    HttpFilter,
    Rds,
    ScopedRds,
    ScopedRoutes,
)
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import BoolValue

from controlplane.translate.clusters import packed
from controlplane.translate.routes import EDGE_ROUTES
from controlplane.translate.sources import ads

EDGE_LISTENER = "edge-http"
INBOUND_LISTENER = "sidecar-inbound"
OUTBOUND_LISTENER = "sidecar-outbound"
OUTBOUND_ROUTES = "outbound"

ROUTER = HttpFilter(name="envoy.filters.http.router", typed_config=packed(Router()))


def _listener(name: str, address: str, port: int, hcm: HttpConnectionManager) -> Listener:
    return Listener(
        name=name,
        address=Address(socket_address=SocketAddress(address=address, port_value=port)),
        filter_chains=[
            FilterChain(
                filters=[Filter(name="envoy.filters.network.http_connection_manager", typed_config=packed(hcm))]
            )
        ],
    )


def scoped_routes() -> ScopedRoutes:
    """Routes chosen by the request's host: the scope whose key is that host names the route
    configuration (one service's) to match in. Scopes and route configurations come by ADS."""
    host = ScopedRoutes.ScopeKeyBuilder.FragmentBuilder(
        header_value_extractor=ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
            name=":authority", index=0))
    return ScopedRoutes(name=EDGE_ROUTES, scope_key_builder=ScopedRoutes.ScopeKeyBuilder(fragments=[host]),
                        rds_config_source=ads(), scoped_rds=ScopedRds(scoped_rds_config_source=ads()))


def edge_listener(address: str, port: int, http_filters: list[HttpFilter], scoped: bool = False) -> Listener:
    """`scoped`: routes come per service behind scoped routes, not as one route configuration."""
    hcm = HttpConnectionManager(
        stat_prefix="edge",
        codec_type=HttpConnectionManager.AUTO,  # HTTP/1.1 and h2c (gRPC) on one port
        rds=None if scoped else Rds(config_source=ads(), route_config_name=EDGE_ROUTES),
        scoped_routes=scoped_routes() if scoped else None,
        # The edge is the first Envoy hop: it appends the peer to X-Forwarded-For, and filters
        # count trusted hops from the right of that header.
        use_remote_address=BoolValue(value=True),
        http_filters=[*http_filters, ROUTER],
    )
    return _listener(EDGE_LISTENER, address, port, hcm)


def inbound_listener(address: str, port: int, cluster: str) -> Listener:
    """Everything arriving at a sidecar goes to its local backend. The routes are inline: they
    depend only on the sidecar's own metadata, so they never change while it runs."""
    local = RouteConfiguration(name="inbound", virtual_hosts=[VirtualHost(
        name="local", domains=["*"],
        # No timeout here: the caller's route (at the edge) bounds the request, and a second
        # timer would only cut the long token streams it allows.
        routes=[Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=cluster, timeout=Duration()))],
    )])
    hcm = HttpConnectionManager(
        stat_prefix="inbound",
        codec_type=HttpConnectionManager.AUTO,
        route_config=local,
        http_filters=[ROUTER],
    )
    return _listener(INBOUND_LISTENER, address, port, hcm)


def outbound_listener(address: str, port: int) -> Listener:
    """Where a sidecar's application calls other models: the policy's routes, without the
    edge's filters (limits are enforced where traffic enters)."""
    hcm = HttpConnectionManager(
        stat_prefix="outbound",
        codec_type=HttpConnectionManager.AUTO,
        rds=Rds(config_source=ads(), route_config_name=OUTBOUND_ROUTES),
        http_filters=[ROUTER],
    )
    return _listener(OUTBOUND_LISTENER, address, port, hcm)

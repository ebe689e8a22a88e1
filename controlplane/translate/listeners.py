from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from google.protobuf.any_pb2 import Any
from google.protobuf.wrappers_pb2 import BoolValue

from controlplane.translate.routes import EDGE_ROUTES
from controlplane.translate.sources import ads

EDGE_LISTENER = "edge-http"


def _packed(message: object) -> Any:
    out = Any()
    out.Pack(message)
    return out


def edge_listener(address: str, port: int, http_filters: list[HttpFilter]) -> Listener:
    hcm = HttpConnectionManager(
        stat_prefix="edge",
        codec_type=HttpConnectionManager.AUTO,  # HTTP/1.1 and h2c (gRPC) on one port
        rds=Rds(config_source=ads(), route_config_name=EDGE_ROUTES),
        # The edge is the first Envoy hop: it appends the peer to X-Forwarded-For, and filters
        # count trusted hops from the right of that header.
        use_remote_address=BoolValue(value=True),
        http_filters=[*http_filters, HttpFilter(name="envoy.filters.http.router", typed_config=_packed(Router()))],
    )
    return Listener(
        name=EDGE_LISTENER,
        address=Address(socket_address=SocketAddress(address=address, port_value=port)),
        filter_chains=[
            FilterChain(
                filters=[Filter(name="envoy.filters.network.http_connection_manager", typed_config=_packed(hcm))]
            )
        ],
    )

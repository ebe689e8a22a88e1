"""What a sidecar proxy gets: an inbound listener to its local backend (a cluster built from its
node metadata), and, when it takes outbound calls, the policy's routes and only the clusters
those routes use."""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.protocol_pb2 import Http1ProtocolOptions, Http2ProtocolOptions
from envoy.config.endpoint.v3.endpoint_components_pb2 import Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from google.protobuf.message import Message

from controlplane.policy import Policy
from controlplane.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.translate.clusters import HTTP_PROTOCOL_OPTIONS, cluster, packed, seconds
from controlplane.translate.endpoints import load_assignment
from controlplane.translate.listeners import OUTBOUND_ROUTES, inbound_listener, outbound_listener
from controlplane.translate.routes import route_configuration

# Policy names are DNS labels, so a dotted name never collides with a backend's cluster.
LOCAL_CLUSTER = "sidecar.local"


def local_cluster(host: str, port: int) -> Cluster:
    """The sidecar's own backend: a static address, so no EDS round trip before it serves."""
    return Cluster(
        name=LOCAL_CLUSTER,
        type=Cluster.STATIC,
        connect_timeout=seconds(1.0),
        load_assignment=ClusterLoadAssignment(cluster_name=LOCAL_CLUSTER, endpoints=[LocalityLbEndpoints(
            lb_endpoints=[LbEndpoint(endpoint=Endpoint(
                address=Address(socket_address=SocketAddress(address=host, port_value=port))))],
        )]),
        # HTTP/1.1 in, HTTP/1.1 out; h2c (gRPC) in, h2c out.
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: packed(HttpProtocolOptions(
            use_downstream_protocol_config=HttpProtocolOptions.UseDownstreamHttpConfig(
                http_protocol_options=Http1ProtocolOptions(), http2_protocol_options=Http2ProtocolOptions()),
        ))},
    )


def sidecar_resources(policy: Policy, listen: tuple[str, int], backend: tuple[str, int],
                      outbound_port: int | None) -> dict[str, dict[str, Message]]:
    inbound = inbound_listener(*listen, LOCAL_CLUSTER)
    out: dict[str, dict[str, Message]] = {
        CLUSTER: {LOCAL_CLUSTER: local_cluster(*backend)},
        ENDPOINT: {},
        LISTENER: {inbound.name: inbound},
        ROUTE: {},
    }
    if outbound_port is None:
        return out
    outbound = outbound_listener(listen[0], outbound_port)
    routes = route_configuration(policy)
    routes.name = OUTBOUND_ROUTES
    used = {b for s in policy.services.values() for r in s.routes for _, b in r.backends_named()}
    for name in sorted(used):
        out[CLUSTER][name] = cluster(name, policy.backends[name])
        out[ENDPOINT][name] = load_assignment(name, policy.backends[name])
    out[LISTENER][outbound.name] = outbound
    out[ROUTE][routes.name] = routes
    return out

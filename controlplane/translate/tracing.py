"""The Telemetry policy → Envoy's OpenTelemetry tracer on every HTTP connection manager a proxy
gets (the edge's listener, a sidecar's inbound and outbound ones), and a cluster for the collector.

The edge samples `sampling_percent`; a sidecar samples nothing of its own, so it traces exactly
the requests whose `traceparent` says the edge sampled them (Envoy's OpenTelemetry tracer keeps
the parent's sampled flag), and a trace is whole or absent.
"""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.core.v3.protocol_pb2 import Http2ProtocolOptions
from envoy.config.endpoint.v3.endpoint_components_pb2 import Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.trace.v3.http_tracer_pb2 import Tracing
from envoy.config.trace.v3.opentelemetry_pb2 import OpenTelemetryConfig
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.type.v3.percent_pb2 import Percent
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import UInt32Value

from controlplane.policy import Policy
from controlplane.policy.telemetry import TELEMETRY_NAME, Telemetry
from controlplane.resources import CLUSTER, LISTENER
from controlplane.translate.clusters import HTTP_PROTOCOL_OPTIONS, packed, seconds

# Policy names are DNS labels, so a dotted name never collides with a backend's cluster.
COLLECTOR_CLUSTER = "sluice.otel-collector"
TRACER = "envoy.tracers.opentelemetry"
HCM = "envoy.filters.network.http_connection_manager"
SERVICE_NAMES = {"edge": "sluice-edge", "sidecar": "sluice-sidecar"}


def collector_cluster(telemetry: Telemetry) -> Cluster:
    collector = telemetry.collector
    return Cluster(
        name=COLLECTOR_CLUSTER,
        type=Cluster.STATIC if collector.is_ip else Cluster.STRICT_DNS,
        connect_timeout=seconds(1.0),
        load_assignment=ClusterLoadAssignment(cluster_name=COLLECTOR_CLUSTER, endpoints=[LocalityLbEndpoints(
            lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(
                address=collector.address, port_value=collector.port))))],
        )]),
        # OTLP/gRPC: HTTP/2 without TLS (a collector beside the proxies, as compose and the overlays run it).
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: packed(HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptions.ExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions()),
        ))},
    )


def hcm_tracing(telemetry: Telemetry, role: str) -> HttpConnectionManager.Tracing:
    config = OpenTelemetryConfig(
        grpc_service=GrpcService(envoy_grpc=GrpcService.EnvoyGrpc(cluster_name=COLLECTOR_CLUSTER),
                                 timeout=seconds(telemetry.collector.timeout_s)),
        service_name=SERVICE_NAMES.get(role, f"sluice-{role}"),
    )
    edge = role == "edge"
    return HttpConnectionManager.Tracing(
        # Only the edge decides; elsewhere the parent's sampled flag does.
        random_sampling=Percent(value=telemetry.sampling_percent if edge else 0.0),
        # A client's x-client-trace-id is honoured at the same rate: clients cannot raise the sampling.
        client_sampling=Percent(value=telemetry.sampling_percent if edge else 0.0),
        max_path_tag_length=UInt32Value(value=telemetry.max_path_tag_length),
        provider=Tracing.Http(name=TRACER, typed_config=packed(config)),
    )


def _traced(listener: Listener, tracing: HttpConnectionManager.Tracing) -> Listener:
    out = Listener()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        for f in chain.filters:
            if f.name != HCM:
                continue
            hcm = HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            hcm.tracing.CopyFrom(tracing)
            f.typed_config.Pack(hcm)
    return out


def with_tracing(resources: dict[str, dict[str, Message]], policy: Policy, role: str) -> dict[str, dict[str, Message]]:
    """The same resources, traced when the policy holds a Telemetry object; unchanged otherwise."""
    telemetry = policy.telemetry.get(TELEMETRY_NAME)
    if telemetry is None:
        return resources
    tracing = hcm_tracing(telemetry, role)
    listeners = resources.get(LISTENER, {})
    return {
        **resources,
        CLUSTER: {**resources.get(CLUSTER, {}), COLLECTOR_CLUSTER: collector_cluster(telemetry)},
        LISTENER: {name: _traced(listener, tracing) for name, listener in listeners.items()},
    }

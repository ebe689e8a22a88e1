from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.endpoint.v3.endpoint_components_pb2 import Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf.wrappers_pb2 import UInt32Value

from controlplane.policy import Backend, Policy


def load_assignment(name: str, backend: Backend) -> ClusterLoadAssignment:
    return ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            LocalityLbEndpoints(
                lb_endpoints=[
                    LbEndpoint(
                        endpoint=Endpoint(
                            address=Address(socket_address=SocketAddress(address=e.address, port_value=e.port))
                        ),
                        load_balancing_weight=UInt32Value(value=e.weight),
                    )
                    for e in backend.endpoints
                ]
            )
        ],
    )


def load_assignments(policy: Policy) -> list[ClusterLoadAssignment]:
    return [load_assignment(name, backend) for name, backend in sorted(policy.backends.items())]

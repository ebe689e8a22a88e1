"""Proxy roles: an edge proxy and a sidecar, grouped by node.cluster and node metadata."""

from __future__ import annotations

import pytest
from envoy.config.core.v3.base_pb2 import Node
from policies import demo_policy

from controlplane import resources as types
from controlplane.cache.consistency import problems
from controlplane.policy import Policy, parse_document, with_document
from controlplane.translate import ProxyGroup, translate
from controlplane.translate.sidecar import LOCAL_CLUSTER
from controlplane.xds.server import group_of

EDGE = ProxyGroup("edge", "127.0.0.1", 10000)


def node(cluster: str, **metadata: object) -> Node:
    out = Node(id="n", cluster=cluster)
    out.metadata.update(metadata)
    return out


def policy() -> Policy:
    out = Policy()
    unused = {"kind": "Backend", "name": "unused", "spec": {"endpoints": [{"address": "10.0.0.9", "port": 1}]}}
    for raw in [*demo_policy(8001, 8002), unused]:
        out = with_document(out, parse_document(raw))
    return out


def test_groups_follow_node_cluster_and_metadata() -> None:
    assert group_of(node("edge", listen_port=10001), EDGE) == ProxyGroup("edge", "127.0.0.1", 10001)
    sidecar = group_of(node("sidecar", listen_address="127.0.0.1", listen_port=15006,
                            backend_address="127.0.0.1", backend_port=8001, outbound_port=0), EDGE)
    assert sidecar == ProxyGroup("sidecar", "127.0.0.1", 15006, ("127.0.0.1", 8001))
    other = group_of(node("sidecar", listen_port=15006, backend_address="127.0.0.1", backend_port=8002), EDGE)
    assert other.key != sidecar.key  # another backend is another group
    with pytest.raises(ValueError, match="local backend"):
        group_of(node("sidecar", listen_port=15006), EDGE)


def test_sidecar_gets_its_local_backend_and_nothing_else() -> None:
    out = translate(policy(), ProxyGroup("sidecar", "127.0.0.1", 15006, ("127.0.0.1", 8001)))
    assert problems(out) == []
    assert list(out[types.CLUSTER]) == [LOCAL_CLUSTER]
    local = out[types.CLUSTER][LOCAL_CLUSTER].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (local.socket_address.address, local.socket_address.port_value) == ("127.0.0.1", 8001)
    (listener,) = out[types.LISTENER].values()
    assert listener.address.socket_address.port_value == 15006
    assert out[types.ENDPOINT] == {} and out[types.ROUTE] == {} and types.EXTENSION_CONFIG not in out


def test_sidecar_outbound_gets_only_the_clusters_its_routes_use() -> None:
    out = translate(policy(), ProxyGroup("sidecar", "127.0.0.1", 15006, ("127.0.0.1", 8001), outbound_port=15001))
    assert problems(out) == []
    assert sorted(out[types.CLUSTER]) == ["classifier-v1", "classifier-v2", LOCAL_CLUSTER]  # not "unused"
    assert sorted(out[types.ENDPOINT]) == ["classifier-v1", "classifier-v2"]
    assert sorted(out[types.LISTENER]) == ["sidecar-inbound", "sidecar-outbound"]
    assert list(out[types.ROUTE]) == ["outbound"]
    edge = translate(policy(), EDGE)
    assert sorted(edge[types.CLUSTER]) == ["classifier-v1", "classifier-v2", "unused"]  # the edge gets all

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from google.protobuf.duration_pb2 import Duration

from controlplane.policy import Backend, Policy
from controlplane.translate.sources import ads


def _seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def cluster(name: str, backend: Backend) -> Cluster:
    return Cluster(
        name=name,
        type=Cluster.EDS,
        eds_cluster_config=Cluster.EdsClusterConfig(eds_config=ads()),
        connect_timeout=_seconds(backend.connect_timeout_s),
    )


def clusters(policy: Policy) -> list[Cluster]:
    return [cluster(name, backend) for name, backend in sorted(policy.backends.items())]

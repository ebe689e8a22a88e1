"""The real Triton clients, through the edge Envoy: HTTP/1.1 and gRPC (h2c) on one listener."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from harness import Backend, ControlPlane, Envoy, free_port

from inference.demo import reference

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]], dtype=np.float32)


@pytest.fixture
def both_protocols(tmp_path: Path, model_repository: Path) -> Iterator[tuple[Backend, int]]:
    grpc_port = free_port()
    backend = Backend.start(tmp_path, model_repository, "classifier:2", "--grpc-port", str(grpc_port))
    yield backend, grpc_port
    backend.proc.stop()


def test_triton_clients_through_envoy(controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
                                      both_protocols: tuple[Backend, int]) -> None:
    backend, grpc_port = both_protocols
    status, body = controlplane.apply(
        {"kind": "Backend", "name": "classifier-http", "spec": {"endpoints": [
            {"address": "127.0.0.1", "port": backend.port}]}},
        {"kind": "Backend", "name": "classifier-grpc", "spec": {"protocol": "http2", "endpoints": [
            {"address": "127.0.0.1", "port": grpc_port}]}},
        {"kind": "Service", "name": "inference", "spec": {"routes": [
            # gRPC calls are HTTP/2 POSTs to /<service>/<method>: one prefix catches the KServe service.
            {"name": "grpc", "match": {"prefix": "/inference.GRPCInferenceService/"},
             "split": [{"backend": "classifier-grpc"}]},
            {"name": "http", "match": {"prefix": "/v2"}, "split": [{"backend": "classifier-http"}]},
        ]}},
    )
    assert status == 200, body
    envoy = start_envoy(controlplane)
    controlplane.wait_converged(envoy.node_id)
    expected = reference("classifier", 2, X)

    http_client = httpclient.InferenceServerClient(url=f"127.0.0.1:{envoy.listen_port}")
    assert http_client.is_model_ready("classifier")
    tensor = httpclient.InferInput("INPUT0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)  # binary tensor extension, the client's default
    result = http_client.infer("classifier", [tensor])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-5)
    assert result.get_response()["model_version"] == "2"

    grpc_client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{envoy.listen_port}")
    assert grpc_client.is_server_ready()
    tensor = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = grpc_client.infer("classifier", [tensor])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-5)
    assert result.get_response().model_version == "2"
    grpc_client.close()
    stats = envoy.stats()
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="classifier-grpc"}' in stats

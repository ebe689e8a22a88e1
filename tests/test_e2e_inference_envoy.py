"""The real Triton clients, through the edge Envoy: HTTP/1.1 and gRPC (h2c) on one listener."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from harness import Backend, ControlPlane, Envoy, free_port
from tritonclient.utils import InferenceServerException

from inference.demo import reference

CONTROL_TOKEN = "edge-test-model-control-token"
X = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]], dtype=np.float32)


@pytest.fixture
def both_protocols(tmp_path: Path, model_repository: Path) -> Iterator[tuple[Backend, int]]:
    grpc_port = free_port()
    backend = Backend.start(tmp_path, model_repository, "classifier:2", "--grpc-port", str(grpc_port))
    yield backend, grpc_port
    backend.proc.stop()


def route_both_protocols(controlplane: ControlPlane, backend: Backend, grpc_port: int) -> None:
    """The recipe of docs/backend.md: the KServe gRPC service and /v2 through one edge listener."""
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


def test_triton_clients_through_envoy(controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
                                      both_protocols: tuple[Backend, int]) -> None:
    backend, grpc_port = both_protocols
    route_both_protocols(controlplane, backend, grpc_port)
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


@pytest.mark.parametrize(("mode", "grpc_code", "http_status"), [
    ((), "StatusCode.PERMISSION_DENIED", 403),
    (("--model-control-mode", "explicit", "--model-control-token", CONTROL_TOKEN), "StatusCode.UNAUTHENTICATED", 401),
])
def test_an_anonymous_client_cannot_unload_through_the_edge(
        controlplane: ControlPlane, start_envoy: Callable[..., Envoy], tmp_path: Path, model_repository: Path,
        mode: tuple[str, ...], grpc_code: str, http_status: int) -> None:
    grpc_port = free_port()
    backend = Backend.start(tmp_path, model_repository, "classifier:2", "--grpc-port", str(grpc_port), *mode)
    try:
        route_both_protocols(controlplane, backend, grpc_port)
        envoy = start_envoy(controlplane)
        controlplane.wait_converged(envoy.node_id)
        edge = f"127.0.0.1:{envoy.listen_port}"
        grpc_client = grpcclient.InferenceServerClient(url=edge)
        http_client = httpclient.InferenceServerClient(url=edge)
        try:
            controls: list[Callable[[], object]] = [lambda: grpc_client.unload_model("classifier"),
                                                    lambda: grpc_client.load_model("classifier"),
                                                    grpc_client.get_model_repository_index]
            for control in controls:
                with pytest.raises(InferenceServerException) as refused:
                    control()
                assert refused.value.status() == grpc_code
            with pytest.raises(InferenceServerException) as refused:
                http_client.unload_model("classifier")
            assert refused.value.status() == str(http_status)
            assert grpc_client.is_model_ready("classifier") and http_client.is_model_ready("classifier")
            if mode:  # with the token, the same recipe works: the edge passes the header through
                grpc_client.unload_model("classifier", headers={"authorization": f"Bearer {CONTROL_TOKEN}"})
                assert not grpc_client.is_model_ready("classifier")
        finally:
            grpc_client.close()
            http_client.close()
    finally:
        backend.proc.stop()

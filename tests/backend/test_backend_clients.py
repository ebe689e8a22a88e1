"""The real Triton clients, with their defaults (binary tensors over HTTP, raw contents over gRPC)."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from backend_harness import CONTROL_HEADERS
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from inference.demo import reference

rng = np.random.default_rng(11)


@pytest.fixture
def http_client(backend):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{backend.http_port}")
    yield client
    client.close()


@pytest.fixture
def grpc_client(backend):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{backend.grpc_port}")
    yield client
    client.close()


def _http_input(x: np.ndarray, binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def _grpc_input(x: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


@pytest.mark.parametrize("version", ["1", "2"])
def test_http_client_binary_defaults(http_client, version: str) -> None:
    x = rng.standard_normal((5, 4)).astype(np.float32)
    result = http_client.infer("classifier", [_http_input(x)], model_version=version, request_id="b-1")
    response = result.get_response()
    assert response["model_version"] == version
    assert response["id"] == "b-1"
    # Binary in, binary out: the output came back as raw bytes, not JSON numbers.
    assert "binary_data_size" in response["outputs"][0]["parameters"]
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference("classifier", int(version), x), rtol=1e-5, atol=1e-6)


def test_http_client_mixed_json_in_binary_out(http_client) -> None:
    x = rng.standard_normal((2, 4)).astype(np.float32)
    outputs = [triton_http.InferRequestedOutput("OUTPUT0", binary_data=True)]
    result = http_client.infer("classifier", [_http_input(x, binary=False)], outputs=outputs)
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference("classifier", 2, x), rtol=1e-5, atol=1e-6)


def test_http_client_metadata_config_stats(http_client) -> None:
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready("classifier", "1")
    config = http_client.get_model_config("classifier")
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}]
    before = http_client.get_inference_statistics("classifier", "1")["model_stats"][0]
    http_client.infer("classifier", [_http_input(np.ones((3, 4), np.float32))], model_version="1")
    after = http_client.get_inference_statistics("classifier", "1")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] >= before["inference_count"] + 3
    names = {(s["name"], s["version"]) for s in http_client.get_inference_statistics()["model_stats"]}
    assert names == {("classifier", "1"), ("classifier", "2")}


def test_http_client_errors(http_client) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        http_client.infer("nope", [_http_input(np.ones((1, 4), np.float32))])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException, match=r"has shape \[1, 5\]") as info:
        http_client.infer("classifier", [_http_input(np.ones((1, 5), np.float32))])
    assert info.value.status() == "400"


@pytest.mark.parametrize("version", ["1", "2"])
def test_grpc_client_infer(grpc_client, version: str) -> None:
    x = rng.standard_normal((4, 4)).astype(np.float32)
    result = grpc_client.infer("classifier", [_grpc_input(x)], model_version=version, request_id="g-1")
    response = result.get_response()
    assert response.model_version == version
    assert response.id == "g-1"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference("classifier", int(version), x), rtol=1e-5, atol=1e-6)


def test_grpc_client_latest_version_and_metadata(grpc_client) -> None:
    x = rng.standard_normal((1, 4)).astype(np.float32)
    assert grpc_client.infer("classifier", [_grpc_input(x)]).get_response().model_version == "2"
    assert grpc_client.is_server_ready() and grpc_client.is_model_ready("classifier", "2")
    meta = grpc_client.get_model_metadata("classifier", as_json=True)
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"][0]["name"] == "INPUT0"
    config = grpc_client.get_model_config("classifier", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    index = grpc_client.get_model_repository_index(headers=CONTROL_HEADERS, as_json=True)["models"]
    assert {(m["name"], m["version"], m["state"]) for m in index} == {("classifier", "1", "READY"), ("classifier", "2", "READY")}
    stats = grpc_client.get_inference_statistics("classifier", "2", as_json=True)["model_stats"]
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1


def test_grpc_errors_map_to_status_codes(grpc_client) -> None:
    with pytest.raises(InferenceServerException, match="no version 7") as info:
        grpc_client.infer("classifier", [_grpc_input(np.ones((1, 4), np.float32))], model_version="7")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    bad = triton_grpc.InferInput("INPUT0", [1, 4], "FP64")
    bad.set_data_from_numpy(np.ones((1, 4), np.float64))
    with pytest.raises(InferenceServerException, match="has datatype FP64") as info:
        grpc_client.infer("classifier", [bad])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_grpc_stream_infer(grpc_client) -> None:
    answers: queue.Queue = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    xs = {f"s{i}": rng.standard_normal((1 + i % 2, 4)).astype(np.float32) for i in range(6)}
    try:
        for request_id, x in xs.items():
            grpc_client.async_stream_infer("classifier", [_grpc_input(x)], model_version="1", request_id=request_id)
        grpc_client.async_stream_infer("classifier", [_grpc_input(np.ones((1, 4), np.float32))], model_version="9", request_id="bad")
        got = [answers.get(timeout=10) for _ in range(len(xs) + 1)]
    finally:
        grpc_client.stop_stream()
    errors = [error for result, error in got if error is not None]
    assert len(errors) == 1 and "no version 9" in str(errors[0])
    for result, error in got:
        if error is None:
            request_id = result.get_response().id
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference("classifier", 1, xs[request_id]), rtol=1e-5, atol=1e-6)


async def test_grpc_response_names_version_in_metadata(backend) -> None:
    """Proxies see the serving version in gRPC response headers, as with HTTP."""
    x = np.ones((1, 4), np.float32)
    request = service_pb2.ModelInferRequest(model_name="classifier", model_version="1")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(x.reshape(-1).tolist())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.grpc_port}") as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        response = await call
        metadata = dict(await call.initial_metadata())
    assert metadata["x-model-version"] == "1" and metadata["x-model-name"] == "classifier"
    # A request sent as typed contents (not raw bytes) is answered with raw bytes, as Triton does.
    out = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 3)
    np.testing.assert_allclose(out, reference("classifier", 1, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_client_compressed_request(http_client, algorithm: str) -> None:
    x = rng.standard_normal((3, 4)).astype(np.float32)
    result = http_client.infer("classifier", [_http_input(x)], model_version="1", request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), reference("classifier", 1, x), rtol=1e-5, atol=1e-6)

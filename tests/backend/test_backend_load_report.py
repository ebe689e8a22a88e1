"""The load report a balancer reads: ORCA `endpoint-load-metrics` on every infer answer (HTTP
header, gRPC trailer) and the same figures on /metrics; and the per-batch fault delay that makes
a replica slower for the load-balancing benchmark."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
from backend_harness import Backend
from tritonclient.grpc import service_pb2, service_pb2_grpc

BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()


def _orca(text: str) -> dict[str, float]:
    """Envoy's TEXT form: `TEXT key=value, key=value`."""
    assert text.startswith("TEXT "), text
    pairs = (part.strip().split("=") for part in text[len("TEXT "):].split(","))
    return {key: float(value) for key, value in pairs}


def _infer(backend: Backend, path: str = "/v2/models/classifier/infer") -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(backend.url + path, BODY, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


def test_every_infer_answer_reports_load_over_http_grpc_and_metrics(backend: Backend) -> None:
    for _ in range(5):
        status, headers = _infer(backend)
        assert status == 200
    report = _orca(headers["endpoint-load-metrics"])
    # Envoy's client_side_weighted_round_robin ignores a report without positive rps and utilization.
    assert report["rps_fractional"] > 0 and report["application_utilization"] > 0
    assert report["named_metrics.waiting"] >= 0 and report["named_metrics.running"] >= 0

    status, headers = _infer(backend, "/v2/models/classifier/versions/9/infer")
    assert status == 404 and "endpoint-load-metrics" in headers, "failures report load too"

    with grpc.insecure_channel(f"127.0.0.1:{backend.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, 4])
        request = service_pb2.ModelInferRequest(model_name="classifier", inputs=[tensor],
                                                raw_input_contents=[np.ones((1, 4), np.float32).tobytes()])
        _, call = stub.ModelInfer.with_call(request, timeout=5)
        trailers = dict(call.trailing_metadata() or ())
    assert _orca(trailers["endpoint-load-metrics"])["rps_fractional"] > 0

    with urllib.request.urlopen(backend.url + "/metrics", timeout=5) as response:
        metrics = response.read().decode()
    rps = next(line for line in metrics.splitlines() if line.startswith("sluice_backend_requests_per_second "))
    assert float(rps.split()[1]) > 0
    assert "sluice_backend_requests_waiting 0" in metrics


def test_batch_delay_slows_every_model_run(start: Callable[..., Backend]) -> None:
    slow = start("--fault-batch-delay-ms", "150", "--load", "classifier:1")
    began = time.monotonic()
    status, headers = _infer(slow)
    assert status == 200 and time.monotonic() - began >= 0.15
    assert _orca(headers["endpoint-load-metrics"])["application_utilization"] > 0

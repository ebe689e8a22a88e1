"""Process-level behaviour: --load, fault injection, start-up errors, SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import aiohttp
import grpc
import numpy as np
import pytest
from backend_harness import REPO_ROOT
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inference.demo import reference
from inference.main import build_parser
from inference.settings import BackendSettings

X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": X.reshape(-1).tolist()}]}


async def test_single_version_process(start) -> None:
    """How the local mesh runs it: one process per version."""
    server = start("--load", "classifier:2")
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get("/v2/models/classifier") as response:
            assert (await response.json())["versions"] == ["2"]
        async with session.post("/v2/models/classifier/infer", json=BODY) as response:
            doc = await response.json()
            assert response.headers["x-model-version"] == "2"
        np.testing.assert_allclose(np.asarray(doc["outputs"][0]["data"]).reshape(1, 3), reference("classifier", 2, X), rtol=1e-5)
        async with session.post("/v2/models/classifier/versions/1/infer", json=BODY) as response:
            assert response.status == 404
            assert "loaded versions: [2]" in (await response.json())["error"]


async def test_fault_error_rate_fails_requests_and_is_logged(start) -> None:
    server = start("--load", "classifier:1", "--fault-error-rate", "1")
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post("/v2/models/classifier/infer", json=BODY) as response:
            assert response.status == 500
            assert "injected fault" in (await response.json())["error"]
    assert "WARNING" in server.log() and "FAULT INJECTION ON" in server.log()


def test_unknown_model_in_load_fails_startup(model_repo) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inference", "--http-port", "0", "--model-repository", str(model_repo), "--load", "nope"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "unknown model 'nope'" in result.stderr


def test_invalid_option_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inference", "--fault-error-rate", "1.5"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "fault_error_rate" in result.stderr


async def test_sigterm_drains_in_flight_request_then_exits_0(start) -> None:
    server = start("--load", "classifier:1", "--fault-delay-ms", "1500", grpc=True)
    async with aiohttp.ClientSession(server.url) as session:
        slow = asyncio.ensure_future(session.post("/v2/models/classifier/infer", json=BODY))
        # Wait until the request is inside the server (the delay is applied after it is admitted).
        await asyncio.sleep(0.4)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        ready_status = None
        while time.monotonic() - sent < 1.0:
            async with aiohttp.ClientSession(server.url) as probe:
                async with probe.get("/v2/health/ready") as response:
                    ready_status = response.status
            if ready_status == 503:
                break
            await asyncio.sleep(0.05)
        assert ready_status == 503
        assert not slow.done(), "the slow request should still be in flight while readiness says 503"
        async with session.post("/v2/models/classifier/infer", json=BODY) as response:
            assert response.status == 503  # new work is refused while draining
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert not (await stub.ServerReady(service_pb2.ServerReadyRequest())).ready
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ModelInfer(service_pb2.ModelInferRequest(model_name="classifier"))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        response = await slow
        assert response.status == 200
        doc = await response.json()
        np.testing.assert_allclose(np.asarray(doc["outputs"][0]["data"]).reshape(1, 3), reference("classifier", 1, X), rtol=1e-5)
    assert await asyncio.to_thread(server.process.wait, 10) == 0


def test_settings_come_from_environment_and_the_command_line_wins(monkeypatch) -> None:
    monkeypatch.setenv("SLUICE_BACKEND_HTTP_PORT", "8002")
    monkeypatch.setenv("SLUICE_BACKEND_HOST", "10.0.0.1")
    monkeypatch.setenv("SLUICE_BACKEND_LOAD", '["classifier:1,2"]')
    args = build_parser().parse_args(["--host", "0.0.0.0", "--fault-delay-ms", "5"])
    settings = BackendSettings(**vars(args))
    assert (settings.host, settings.http_port, settings.fault_delay_ms) == ("0.0.0.0", 8002, 5.0)
    assert settings.load_specs() == [("classifier", [1, 2])]
    assert settings.fault_error_rate == 0.0 and settings.grpc_port == 0

"""A model slower than its traffic: bounded queue, per-request timeouts, priorities, over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import grpc
import numpy as np
import pytest
from backend_harness import start_backend, write_slow_model
from tritonclient.grpc import service_pb2, service_pb2_grpc

QUEUE = 2


@pytest.fixture(scope="module")
def slow_backend(tmp_path_factory):
    repo = tmp_path_factory.mktemp("slow-repo")
    write_slow_model(
        repo,
        {
            "dynamic_batching": {
                "max_queue_delay_microseconds": 0,
                "priority_levels": 2,
                "default_priority_level": 2,
                "default_queue_policy": {"max_queue_size": QUEUE},
            }
        },
    )
    # Each run also holds the instance 200 ms: the queue states the tests build (a request running,
    # others queued behind it) then last far longer than the few ms between their requests,
    # however fast the machine multiplies the matrices.
    server = start_backend(repo, tmp_path_factory.mktemp("slow-logs"), "--fault-batch-delay-ms", "200", grpc=True)
    yield server
    server.stop()


async def rejected_count(session: aiohttp.ClientSession) -> int:
    async with session.get("/metrics") as response:
        metrics = await response.text()
    found = re.search(r'nv_inference_request_failure\{model="slow",version="1",reason="REJECTED"\} (\d+)', metrics)
    assert found, metrics
    return int(found.group(1))


def body(value: float, rows: int = 1, **parameters: object) -> dict[str, object]:
    tensor = {"name": "INPUT0", "shape": [rows, 4], "datatype": "FP32", "data": [value] * 4 * rows}
    doc: dict[str, object] = {"inputs": [tensor]}
    if parameters:
        doc["parameters"] = parameters
    return doc


async def post(session: aiohttp.ClientSession, doc: dict[str, object]) -> tuple[int, dict[str, object]]:
    async with session.post("/v2/models/slow/infer", json=doc) as response:
        return response.status, await response.json()


async def test_full_queue_answers_503_and_counts_rejections(slow_backend) -> None:
    async with aiohttp.ClientSession(slow_backend.url) as session:
        rejected_before = await rejected_count(session)
        results = await asyncio.gather(*(post(session, body(i)) for i in range(12)))
        rejected = await rejected_count(session) - rejected_before
    served = [(i, doc) for i, (status, doc) in enumerate(results) if status == 200]
    refused = [doc for status, doc in results if status == 503]
    assert len(served) + len(refused) == 12
    assert refused, "12 requests at once against a queue of 2 must overflow it"
    assert all("queue is full (2 requests waiting)" in doc["error"] for doc in refused)
    # At least a full queue's worth is served, each with its own input back.
    assert len(served) >= QUEUE
    for i, doc in served:
        assert doc["outputs"][0]["data"] == [float(i)] * 4
    assert rejected == len(refused)


async def test_request_timeout_expires_in_queue_with_504(slow_backend) -> None:
    async with aiohttp.ClientSession(slow_backend.url) as session:
        running = asyncio.ensure_future(post(session, body(1.0)))
        await asyncio.sleep(0.01)
        status, doc = await post(session, body(2.0, timeout=2000))  # 2 ms, behind a ~35 ms run
        assert status == 504
        assert "timed out after 2 ms" in doc["error"]
        assert (await running)[0] == 200


async def test_grpc_full_queue_is_unavailable(slow_backend) -> None:
    async def infer(stub: service_pb2_grpc.GRPCInferenceServiceStub, value: float) -> grpc.StatusCode:
        request = service_pb2.ModelInferRequest(model_name="slow")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.full(4, value, dtype="<f4").tobytes())
        try:
            response = await stub.ModelInfer(request)
        except grpc.aio.AioRpcError as error:
            assert error.code() != grpc.StatusCode.UNAVAILABLE or "queue is full" in error.details()
            return error.code()
        assert np.frombuffer(response.raw_output_contents[0], dtype="<f4").tolist() == [value] * 4
        return grpc.StatusCode.OK

    async with grpc.aio.insecure_channel(f"127.0.0.1:{slow_backend.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        codes = await asyncio.gather(*(infer(stub, float(i)) for i in range(12)))
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


async def test_high_priority_overtakes_queued_default_requests(slow_backend) -> None:
    order: list[str] = []

    async def tagged(session: aiohttp.ClientSession, tag: str, doc: dict[str, object]) -> None:
        status, _ = await post(session, doc)
        assert status == 200
        order.append(tag)

    # Full batches (8 rows, the model's maximum) cannot be merged, so each runs on its own.
    async with aiohttp.ClientSession(slow_backend.url) as session:
        first = asyncio.ensure_future(tagged(session, "running", body(0.0, rows=8)))
        await asyncio.sleep(0.01)
        low = asyncio.ensure_future(tagged(session, "default", body(1.0, rows=8)))
        await asyncio.sleep(0.005)
        high = asyncio.ensure_future(tagged(session, "high", body(2.0, rows=8, priority=1)))
        await asyncio.gather(first, low, high)
    assert order == ["running", "high", "default"]

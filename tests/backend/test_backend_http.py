"""The KServe v2 HTTP surface of the real backend process, over loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import numpy as np
import pytest

from inference.demo import reference

rng = np.random.default_rng(7)


def infer_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}], **extra}


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, dict[str, Any], Any]:
    async with session.post(url, json=body) as response:
        return response.status, dict(response.headers), await response.json()


def output_of(doc: dict[str, Any], name: str = "OUTPUT0") -> np.ndarray:
    (out,) = [o for o in doc["outputs"] if o["name"] == name]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


async def test_server_metadata_and_health(backend) -> None:
    async with aiohttp.ClientSession(backend.url) as session:
        async with session.get("/v2") as response:
            meta = await response.json()
        assert response.status == 200
        assert meta["name"] == "sluice-backend"
        assert "binary_tensor_data" in meta["extensions"]
        for path in ("/v2/health/live", "/v2/health/ready"):
            async with session.get(path) as response:
                assert response.status == 200, path


async def test_model_metadata(backend) -> None:
    async with aiohttp.ClientSession(backend.url) as session:
        async with session.get("/v2/models/classifier") as response:
            meta = await response.json()
        assert response.status == 200
        assert meta["versions"] == ["1", "2"]
        assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 3]}]
        async with session.get("/v2/models/classifier/versions/1") as response:
            assert (await response.json())["versions"] == ["1"]
        async with session.get("/v2/models/classifier/versions/9") as response:
            assert response.status == 404
            assert "no version 9" in (await response.json())["error"]


@pytest.mark.parametrize("version", [1, 2])
async def test_infer_version_route_matches_reference(backend, version: int) -> None:
    x = rng.standard_normal((3, 4)).astype(np.float32)
    async with aiohttp.ClientSession(backend.url) as session:
        status, headers, doc = await post(session, f"/v2/models/classifier/versions/{version}/infer", infer_body(x, id="req-7"))
    assert status == 200, doc
    assert headers["x-model-version"] == str(version)
    assert headers["x-model-name"] == "classifier"
    assert doc["model_version"] == str(version)
    assert doc["model_name"] == "classifier"
    assert doc["id"] == "req-7"
    np.testing.assert_allclose(output_of(doc), reference("classifier", version, x), rtol=1e-5, atol=1e-6)


async def test_versions_answer_differently_and_latest_is_default(backend) -> None:
    x = rng.standard_normal((4, 4)).astype(np.float32)
    async with aiohttp.ClientSession(backend.url) as session:
        _, _, v1 = await post(session, "/v2/models/classifier/versions/1/infer", infer_body(x))
        status, headers, latest = await post(session, "/v2/models/classifier/infer", infer_body(x))
    assert status == 200
    assert headers["x-model-version"] == "2" and latest["model_version"] == "2"
    np.testing.assert_allclose(output_of(latest), reference("classifier", 2, x), rtol=1e-5, atol=1e-6)
    assert np.abs(output_of(v1) - output_of(latest)).max() > 0.1


async def test_nested_data_and_requested_outputs(backend) -> None:
    x = rng.standard_normal((2, 4)).astype(np.float32)
    body = {
        "inputs": [{"name": "INPUT0", "shape": [2, 4], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [{"name": "OUTPUT0"}],
    }
    async with aiohttp.ClientSession(backend.url) as session:
        status, _, doc = await post(session, "/v2/models/classifier/versions/1/infer", body)
    assert status == 200, doc
    assert [o["name"] for o in doc["outputs"]] == ["OUTPUT0"]
    assert doc["outputs"][0]["datatype"] == "FP32" and doc["outputs"][0]["shape"] == [2, 3]
    np.testing.assert_allclose(output_of(doc), reference("classifier", 1, x), rtol=1e-5, atol=1e-6)


async def test_concurrent_requests_each_get_their_own_answer(backend) -> None:
    """Many requests at once are merged into batches; each caller must get its own rows back."""
    xs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(40)]
    async with aiohttp.ClientSession(backend.url) as session:
        results = await asyncio.gather(*(post(session, "/v2/models/classifier/versions/1/infer", infer_body(x, id=str(i))) for i, x in enumerate(xs)))
    for i, (x, (status, _, doc)) in enumerate(zip(xs, results, strict=True)):
        assert status == 200, doc
        assert doc["id"] == str(i)
        np.testing.assert_allclose(output_of(doc), reference("classifier", 1, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/v2/models/nope/infer", "unknown model 'nope'"),
        ("/v2/models/classifier/versions/3/infer", "no version 3"),
        ("/v2/models/classifier/versions/latest/infer", "positive integer"),
    ],
)
async def test_unknown_model_or_version_is_404(backend, path: str, fragment: str) -> None:
    async with aiohttp.ClientSession(backend.url) as session:
        status, _, doc = await post(session, path, infer_body(np.zeros((1, 4), np.float32)))
    assert status == 404
    assert fragment in doc["error"]


def _input(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    tensor.update(overrides)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_input(shape=[1, 3], data=[1, 2, 3]), "has shape [1, 3]"),
        (_input(datatype="FP64"), "has datatype FP64"),
        (_input(datatype="FP99"), "unknown datatype 'FP99'"),
        (_input(shape=[2, 4]), "has 4 data elements but shape [2, 4] needs 8"),
        (_input(name="INPUT9"), "has no input 'INPUT9'"),
        (_input(data=["a", "b", "c", "d"]), "cannot be read as FP32"),
        (_input(shape=[9, 4], data=[0.0] * 36), "batch size 9"),
        ({"inputs": []}, "non-empty 'inputs'"),
        ({**_input(), "outputs": [{"name": "OUTPUT7"}]}, "has no output 'OUTPUT7'"),
    ],
)
async def test_bad_input_is_400_naming_the_problem(backend, body: Any, fragment: str) -> None:
    async with aiohttp.ClientSession(backend.url) as session:
        status, _, doc = await post(session, "/v2/models/classifier/infer", body)
    assert status == 400
    assert fragment in doc["error"]


async def test_malformed_json_is_400(backend) -> None:
    async with aiohttp.ClientSession(backend.url) as session:
        async with session.post("/v2/models/classifier/infer", data=b"{not json") as response:
            assert response.status == 400
            assert "not valid JSON" in (await response.json())["error"]


async def test_model_readiness_routes(backend) -> None:
    async with aiohttp.ClientSession(backend.url) as session:
        for path, status in [
            ("/v2/models/classifier/ready", 200),
            ("/v2/models/classifier/versions/1/ready", 200),
            ("/v2/models/classifier/versions/5/ready", 404),
            ("/v2/models/nope/ready", 404),
        ]:
            async with session.get(path) as response:
                assert response.status == status, path


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize("body", [
    _nested(100_000),
    b'{"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": ' + _nested(100_000) + b"}]}",
    b'{"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": ' + _nested(900) + b"}]}",
], ids=["whole-body", "data", "data-under-the-parser-limit"])
async def test_deeply_nested_json_is_400(backend, body: bytes) -> None:
    async with aiohttp.ClientSession(backend.url) as session:
        async with session.post("/v2/models/classifier/infer", data=body) as response:
            assert response.status == 400, await response.text()
            assert "error" in await response.json()

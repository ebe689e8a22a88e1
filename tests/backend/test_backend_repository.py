"""Version policies, the repository API, the response cache and /metrics, on real processes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import aiohttp
import numpy as np
import pytest
from backend_harness import CONTROL_HEADERS, CONTROL_TOKEN, MODEL_CONTROL, REPO_ROOT, variant_repo

from inference.demo import reference

X = np.array([[1.0, -0.5, 0.25, 2.0]], dtype=np.float32)
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": X.reshape(-1).tolist()}]}


async def get_json(session: aiohttp.ClientSession, path: str) -> tuple[int, object]:
    async with session.get(path) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("policy", "versions"),
    [({"latest": {"num_versions": 1}}, ["2"]), ({"latest": {"num_versions": 2}}, ["1", "2"]), ({"specific": {"versions": [1]}}, ["1"])],
)
async def test_version_policy_picks_versions(start, model_repo, tmp_path, policy, versions) -> None:
    repo = variant_repo(model_repo, tmp_path / "repo", {"version_policy": policy})
    server = start(repo=repo)
    async with aiohttp.ClientSession(server.url) as session:
        _, meta = await get_json(session, "/v2/models/classifier")
        assert meta["versions"] == versions
        for v in ("1", "2"):
            status, _ = await get_json(session, f"/v2/models/classifier/versions/{v}/ready")
            assert (status == 200) == (v in versions)
        async with session.post("/v2/models/classifier/infer", json=BODY) as response:
            assert response.headers["x-model-version"] == versions[-1]


async def test_model_control_is_off_by_default(start) -> None:
    server = start("--load", "classifier:1")
    async with aiohttp.ClientSession(server.url) as session:
        for path in ("/v2/repository/index", "/v2/repository/models/classifier/load", "/v2/repository/models/classifier/unload"):
            async with session.post(path, headers=CONTROL_HEADERS) as response:
                assert response.status == 403
                assert "--model-control-mode explicit" in (await response.json())["error"]
        assert (await get_json(session, "/v2/models/classifier/ready"))[0] == 200


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {CONTROL_TOKEN}", f"Bearer {CONTROL_TOKEN}x", "Bearer "])
async def test_model_control_needs_the_token(start, authorization: str | None) -> None:
    server = start("--load", "classifier:1", *MODEL_CONTROL)
    headers = {} if authorization is None else {"Authorization": authorization}
    async with aiohttp.ClientSession(server.url) as session:
        for path in ("/v2/repository/index", "/v2/repository/models/classifier/unload"):
            async with session.post(path, headers=headers) as response:
                assert response.status == 401
                assert "Bearer" in (await response.json())["error"]
        assert (await get_json(session, "/v2/models/classifier/ready"))[0] == 200


def test_explicit_model_control_without_a_token_does_not_start(model_repo) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inference", "--http-port", "0", "--model-repository", str(model_repo),
         "--model-control-mode", "explicit"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "needs --model-control-token" in result.stderr


async def test_unload_and_load_through_the_repository_api(start) -> None:
    server = start("--load", "classifier:1", *MODEL_CONTROL)
    async with aiohttp.ClientSession(server.url, headers=CONTROL_HEADERS) as session:
        async with session.post("/v2/repository/models/classifier/unload") as response:
            assert response.status == 200
        async with session.post("/v2/repository/index", json={}) as response:
            assert await response.json() == [{"name": "classifier", "state": "UNAVAILABLE"}]
        assert (await get_json(session, "/v2/models/classifier/ready"))[0] == 503
        assert (await get_json(session, "/v2/health/ready"))[0] == 503
        async with session.post("/v2/models/classifier/infer", json=BODY) as response:
            assert response.status == 503
            assert "not loaded" in (await response.json())["error"]
        # Loading again follows the config's version policy (all), not the start-up --load.
        async with session.post("/v2/repository/models/classifier/load") as response:
            assert response.status == 200
        async with session.post("/v2/repository/index", json={"ready": True}) as response:
            index = await response.json()
        assert [(e["version"], e["state"]) for e in index] == [("1", "READY"), ("2", "READY")]
        assert (await get_json(session, "/v2/health/ready"))[0] == 200
        async with session.post("/v2/repository/models/nope/load") as response:
            assert response.status == 404


async def test_load_reports_a_broken_config(start, model_repo, tmp_path) -> None:
    repo = variant_repo(model_repo, tmp_path / "repo", {})
    server = start(*MODEL_CONTROL, repo=repo)
    (repo / "classifier" / "config.yaml").write_text((repo / "classifier" / "config.yaml").read_text() + "max_batch_sise: 4\n")
    async with aiohttp.ClientSession(server.url, headers=CONTROL_HEADERS) as session:
        async with session.post("/v2/repository/models/classifier/load") as response:
            assert response.status == 400
            assert "max_batch_sise" in (await response.json())["error"]
        async with session.post("/v2/repository/index") as response:
            index = await response.json()
        # The versions loaded before keep serving; the index says why the reload failed.
        assert [(e["version"], e["state"]) for e in index] == [("1", "READY"), ("2", "READY")]
        assert all("max_batch_sise" in e["reason"] for e in index)
        async with session.post("/v2/models/classifier/infer", json=BODY) as response:
            assert response.status == 200


def test_cache_on_a_non_deterministic_model_is_refused(model_repo, tmp_path) -> None:
    repo = variant_repo(model_repo, tmp_path / "repo", {"deterministic": False, "response_cache": {"enable": True}})
    result = subprocess.run(
        [sys.executable, "-m", "inference", "--http-port", "0", "--model-repository", str(repo)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "response_cache cannot be enabled on a non-deterministic model" in result.stderr


def metric(text: str, name: str, **labels: str) -> float:
    wanted = {"model": "classifier", **labels}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == wanted:
            return float(match.group(2))
    raise AssertionError(f"no {name}{wanted} in /metrics")


async def test_response_cache_hits_misses_and_ttl(start, model_repo, tmp_path) -> None:
    repo = variant_repo(model_repo, tmp_path / "repo", {"response_cache": {"enable": True, "ttl_seconds": 0.3, "max_entries": 8}})
    server = start("--load", "classifier:1", repo=repo)
    async with aiohttp.ClientSession(server.url) as session:
        answers, cache_headers = [], []
        for _ in range(3):
            async with session.post("/v2/models/classifier/infer", json=BODY) as response:
                answers.append((await response.json())["outputs"][0]["data"])
                cache_headers.append(response.headers.get("x-inference-cache"))
        other = {"inputs": [{**BODY["inputs"][0], "data": [0.0, 0.0, 0.0, 1.0]}]}
        async with session.post("/v2/models/classifier/infer", json=other) as response:
            assert response.status == 200
        await asyncio.sleep(0.4)  # past the TTL: computed again
        async with session.post("/v2/models/classifier/infer", json=BODY) as response:
            answers.append((await response.json())["outputs"][0]["data"])
        async with session.get("/metrics") as response:
            text = await response.text()
        _, stats = await get_json(session, "/v2/models/classifier/versions/1/stats")
    for data in answers:
        np.testing.assert_allclose(np.asarray(data).reshape(1, 3), reference("classifier", 1, X), rtol=1e-5)
    assert cache_headers == [None, "hit", "hit"]
    assert metric(text, "nv_cache_num_hits_per_model", version="1") == 2
    assert metric(text, "nv_cache_num_misses_per_model", version="1") == 3
    # Only misses reach the model.
    assert stats["model_stats"][0]["execution_count"] == 3


async def test_metrics_count_successes_failures_and_batches(start) -> None:
    server = start("--load", "classifier:1,2")
    async with aiohttp.ClientSession(server.url) as session:
        for _ in range(3):
            async with session.post("/v2/models/classifier/versions/1/infer", json=BODY) as response:
                assert response.status == 200
        bad = {"inputs": [{**BODY["inputs"][0], "datatype": "FP64"}]}
        async with session.post("/v2/models/classifier/versions/1/infer", json=bad) as response:
            assert response.status == 400
        async with session.post("/v2/models/classifier/versions/2/infer", json=BODY) as response:
            assert response.status == 200
        async with session.get("/metrics") as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    assert metric(text, "nv_inference_request_success", version="1") == 3
    assert metric(text, "nv_inference_request_success", version="2") == 1
    assert metric(text, "nv_inference_request_failure", version="1", reason="OTHER") == 1
    assert metric(text, "nv_inference_request_failure", version="1", reason="REJECTED") == 0
    assert metric(text, "nv_inference_batch_size_count", version="1") == 3
    assert metric(text, "nv_inference_batch_size_bucket", version="1", le="1") == 3
    assert metric(text, "nv_inference_pending_request_count", version="1") == 0
    assert metric(text, "nv_inference_compute_infer_duration_us", version="1") > 0
    assert metric(text, "nv_inference_queue_duration_us", version="2") >= 0
    assert "# TYPE nv_inference_batch_size histogram" in text


async def test_several_instances_answer_concurrent_requests(start, model_repo, tmp_path) -> None:
    repo = variant_repo(model_repo, tmp_path / "repo", {"instance_group": [{"count": 2, "kind": "KIND_CPU"}]})
    server = start("--load", "classifier:2", repo=repo)
    xs = np.random.default_rng(2).standard_normal((24, 1, 4)).astype(np.float32)

    async def one(session: aiohttp.ClientSession, x: np.ndarray) -> np.ndarray:
        doc = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
        async with session.post("/v2/models/classifier/infer", json=doc) as response:
            assert response.status == 200
            return np.asarray((await response.json())["outputs"][0]["data"], dtype=np.float32).reshape(1, 3)

    async with aiohttp.ClientSession(server.url) as session:
        outputs = await asyncio.gather(*(one(session, x) for x in xs))
        _, config = await get_json(session, "/v2/models/classifier/config")
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    for x, out in zip(xs, outputs, strict=True):
        np.testing.assert_allclose(out, reference("classifier", 2, x), rtol=1e-5, atol=1e-6)

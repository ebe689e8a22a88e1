"""The shadow comparator against real backends (classifier versions 1 and 2, JSON and binary
tensors), its bounds, and the comparisons it makes."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
from harness import Backend

from controlplane.policy.model import RouteMatch
from controlplane.shadow import Comparator, Target
from controlplane.shadow.compare import compare, compare_generations, for_comparison
from inference import demo

X = demo.classifier_inputs(8, seed=5)
JSON_BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [8, 4], "datatype": "FP32",
                                    "data": X.ravel().tolist()}]}).encode()


async def started(backends: dict[int, Backend], candidate: int, **bounds: int) -> Comparator:
    comparator = Comparator(**bounds)
    await comparator.start("127.0.0.1", 0)
    comparator.set_targets({"next": Target(RouteMatch(prefix="/v2/models/classifier"),
                                           (f"127.0.0.1:{backends[1].port}",),
                                           (f"127.0.0.1:{backends[candidate].port}",))})
    return comparator


async def mirror(comparator: Comparator, body: bytes, headers: dict[str, str] | None = None) -> int:
    assert comparator.address is not None
    host, port = comparator.address
    async with aiohttp.ClientSession() as session, session.post(
            f"http://{host}:{port}/v2/models/classifier/infer", data=body,
            headers={"Content-Type": "application/json", **(headers or {})}) as r:
        return r.status


async def test_json_and_binary_tensors_are_compared_row_by_row(backends: dict[int, Backend]) -> None:
    comparator = await started(backends, candidate=2)
    try:
        assert await mirror(comparator, JSON_BODY) == 204
        inputs = [triton.InferInput("INPUT0", [8, 4], "FP32")]
        inputs[0].set_data_from_numpy(X, binary_data=True)
        outputs = [triton.InferRequestedOutput("OUTPUT0", binary_data=True)]
        body, header_length = triton.InferenceServerClient.generate_request_body(inputs, outputs)
        assert await mirror(comparator, body, {"Inference-Header-Content-Length": str(header_length)}) == 204
        tally = comparator.take("next")
    finally:
        await comparator.close()
    expected = (demo.reference("classifier", 1, X).argmax(1) == demo.reference("classifier", 2, X).argmax(1))
    assert (tally.compared, tally.incomparable, tally.candidate_errors) == (2, 0, 0)
    assert tally.comparison.rows == 16 and tally.comparison.agreed_rows == 2 * int(expected.sum())
    diff = np.abs(demo.reference("classifier", 1, X) - demo.reference("classifier", 2, X)).max()
    assert tally.comparison.max_abs_diff == pytest.approx(diff, abs=1e-5)
    assert comparator.take("next").compared == 0  # a new window


async def test_a_full_comparator_drops_and_counts(backends: dict[int, Backend]) -> None:
    comparator = await started(backends, candidate=1, max_inflight=1)
    try:
        codes = await asyncio.gather(*(mirror(comparator, JSON_BODY) for _ in range(20)))
        tally = comparator.take("next")
    finally:
        await comparator.close()
    assert codes.count(204) == tally.compared and codes.count(503) == tally.dropped > 0
    assert tally.agreement == 1.0


def test_generations_exact_match_and_common_prefix() -> None:
    def answer(text: str, tokens: int) -> bytes:
        return json.dumps({"choices": [{"index": 0, "message": {"content": text}}],
                           "usage": {"completion_tokens": tokens}}).encode()

    same = compare((answer("abcdefgh", 4), None), (answer("abcdefgh", 4), None))
    assert (same.generations, same.exact, same.prefix_tokens) == (1, 1, 4)
    half = compare_generations(json.loads(answer("abcdefgh", 4)), json.loads(answer("abcdXXXX", 4)))
    assert (half.exact, half.prefix_tokens) == (0, 2)  # 4 of 8 characters at 2 characters per token


def test_embeddings_cosine() -> None:
    a = {"data": [{"embedding": [1.0, 0.0]}, {"embedding": [0.0, 2.0]}]}
    b = {"data": [{"embedding": [1.0, 0.0]}, {"embedding": [2.0, 0.0]}]}
    c = compare((json.dumps(a).encode(), None), (json.dumps(b).encode(), None))
    assert (c.rows, c.argmax_rows, c.min_cosine, c.cosine_sum) == (2, 0, 0.0, 1.0)


def test_generation_requests_are_made_comparable() -> None:
    streamed = json.loads(for_comparison(json.dumps({"messages": [], "stream": True, "temperature": 0.7,
                                                     "stream_options": {"include_usage": True}}).encode()))
    assert streamed == {"messages": [], "stream": False, "temperature": 0.7, "seed": 0}
    greedy = json.loads(for_comparison(json.dumps({"prompt": "x", "temperature": 0}).encode()))
    assert greedy == {"prompt": "x", "temperature": 0, "stream": False}
    assert for_comparison(JSON_BODY) == JSON_BODY  # tensors go as they came


async def test_large_requests_and_answers_are_dropped_and_counted(backends: dict[int, Backend]) -> None:
    small = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32",
                                    "data": [1, 2, 3, 4]}]}).encode()
    comparator = await started(backends, candidate=1, max_body_bytes=len(small) + 10)
    try:
        assert await mirror(comparator, JSON_BODY) == 503  # the request is too large
        assert await mirror(comparator, small) == 503  # the request fits, the answers do not
        tally = comparator.take("next")
    finally:
        await comparator.close()
    assert (tally.dropped, tally.compared) == (2, 0)

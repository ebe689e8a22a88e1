"""The dynamic batcher in-process, with a real run function that a test can hold busy."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from inference.batching import BatchPolicy, DynamicBatcher
from inference.errors import DeadlineExceeded, Unavailable
from inference.stats import ModelStats

POLICY = BatchPolicy(
    max_batch_size=8,
    merge=True,
    max_queue_delay_s=0.0,
    preferred_batch_sizes=(),
    max_queue_size=16,
    default_timeout_s=None,
    allow_timeout_override=True,
    priority_levels=2,
    default_priority=2,
    instances=1,
)


class GatedModel:
    """Doubles its input; blocks while the gate is closed, so tests decide when a run ends."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[np.ndarray] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        self.batches.append(inputs["x"])
        return {"y": inputs["x"] * 2}


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


async def started(policy: BatchPolicy, model: GatedModel, executor) -> tuple[DynamicBatcher, ModelStats]:
    stats = ModelStats("m", 1)
    batcher = DynamicBatcher(policy, model, executor, stats)
    batcher.start()
    return batcher, stats


def rows(value: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 2), value, dtype=np.float32)}


async def occupy(batcher: DynamicBatcher, stats: ModelStats) -> asyncio.Task:
    """Submit one request and wait until the model is running it (its queue time is recorded then)."""
    task = asyncio.ensure_future(batcher.submit(rows(-1)))
    while stats.queue.count < 1:
        await asyncio.sleep(0.005)
    return task


async def test_requests_queued_behind_a_busy_model_are_merged(executor) -> None:
    model = GatedModel()
    batcher, stats = await started(POLICY, model, executor)
    first = await occupy(batcher, stats)
    waiting = [asyncio.ensure_future(batcher.submit(rows(i, n=1 + i % 2))) for i in range(5)]
    await asyncio.sleep(0.02)
    assert batcher.depth == 5
    model.gate.set()
    results = await asyncio.gather(first, *waiting)
    for i, result in enumerate(results[1:]):
        np.testing.assert_array_equal(result["y"], np.full((1 + i % 2, 2), 2.0 * i, dtype=np.float32))
    # The five waiting requests (7 rows) ran as one batch after the first.
    assert [len(b) for b in model.batches] == [1, 7]
    assert stats.execution_count == 2 and stats.inference_count == 8
    await batcher.stop()


async def test_batch_never_exceeds_max_batch_size(executor) -> None:
    model = GatedModel()
    batcher, stats = await started(POLICY, model, executor)
    first = await occupy(batcher, stats)
    waiting = [asyncio.ensure_future(batcher.submit(rows(i, n=3))) for i in range(4)]
    await asyncio.sleep(0.02)
    model.gate.set()
    await asyncio.gather(first, *waiting)
    assert [len(b) for b in model.batches] == [1, 6, 6]
    await batcher.stop()


async def test_full_queue_is_refused(executor) -> None:
    model = GatedModel()
    batcher, stats = await started(replace(POLICY, max_queue_size=2), model, executor)
    first = await occupy(batcher, stats)
    queued = [asyncio.ensure_future(batcher.submit(rows(i))) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Unavailable, match="queue is full"):
        await batcher.submit(rows(9))
    model.gate.set()
    await asyncio.gather(first, *queued)
    await batcher.stop()


async def test_higher_priority_runs_first(executor) -> None:
    model = GatedModel()
    batcher, stats = await started(replace(POLICY, merge=False), model, executor)
    first = await occupy(batcher, stats)
    low = asyncio.ensure_future(batcher.submit(rows(2.0), priority=2))
    await asyncio.sleep(0.005)
    high = asyncio.ensure_future(batcher.submit(rows(1.0), priority=1))
    default = asyncio.ensure_future(batcher.submit(rows(3.0)))  # default level 2: after `low`
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.gather(first, low, high, default)
    assert [float(b[0, 0]) for b in model.batches] == [-1.0, 1.0, 2.0, 3.0]
    await batcher.stop()


async def test_timeout_while_queued_and_the_request_is_never_run(executor) -> None:
    model = GatedModel()
    batcher, stats = await started(POLICY, model, executor)
    first = await occupy(batcher, stats)
    with pytest.raises(DeadlineExceeded, match="timed out after 50 ms"):
        await batcher.submit(rows(5.0), timeout_s=0.05)
    model.gate.set()
    await first
    await batcher.submit(rows(6.0))
    assert [float(b[0, 0]) for b in model.batches] == [-1.0, 6.0]
    await batcher.stop()


async def test_idle_model_waits_max_queue_delay_to_merge(executor) -> None:
    model = GatedModel()
    model.gate.set()
    batcher, stats = await started(replace(POLICY, max_queue_delay_s=0.1), model, executor)
    a = asyncio.ensure_future(batcher.submit(rows(1.0)))
    await asyncio.sleep(0.02)
    b = asyncio.ensure_future(batcher.submit(rows(2.0)))
    await asyncio.gather(a, b)
    assert [len(batch) for batch in model.batches] == [2]
    await batcher.stop()


async def test_preferred_size_dispatches_without_waiting(executor) -> None:
    model = GatedModel()
    model.gate.set()
    batcher, stats = await started(replace(POLICY, max_queue_delay_s=5.0, preferred_batch_sizes=(2,)), model, executor)
    result = await asyncio.wait_for(batcher.submit(rows(1.0, n=2)), 1.0)
    assert result["y"].shape == (2, 2)
    await batcher.stop()


async def test_stop_refuses_what_is_still_queued(executor) -> None:
    model = GatedModel()
    batcher, stats = await started(POLICY, model, executor)
    first = await occupy(batcher, stats)
    queued = asyncio.ensure_future(batcher.submit(rows(1.0)))
    await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.01)
    model.gate.set()
    await stopping
    with pytest.raises(Unavailable, match="unloaded"):
        await queued
    await first


async def test_stop_serves_the_queue_within_its_drain_time(executor) -> None:
    model = GatedModel()
    batcher, stats = await started(POLICY, model, executor)
    first = await occupy(batcher, stats)
    queued = asyncio.ensure_future(batcher.submit(rows(1.0)))
    await asyncio.sleep(0.01)
    stopping = asyncio.ensure_future(batcher.stop(drain_timeout_s=5.0))
    await asyncio.sleep(0.01)
    with pytest.raises(Unavailable, match="unloaded"):
        await batcher.submit(rows(2.0))
    model.gate.set()
    await stopping
    np.testing.assert_array_equal((await queued)["y"], np.full((1, 2), 2.0, dtype=np.float32))
    await first


async def test_gpu_style_padding_runs_bucket_shapes_and_returns_real_rows(executor) -> None:
    model = GatedModel()
    batcher, stats = await started(replace(POLICY, pad_buckets=(1, 2, 4, 8)), model, executor)
    first = await occupy(batcher, stats)
    waiting = [asyncio.ensure_future(batcher.submit(rows(i + 1.0))) for i in range(3)]
    await asyncio.sleep(0.02)
    model.gate.set()
    results = await asyncio.gather(first, *waiting)
    # Three rows ran as a batch of four (the fourth zero padding); each caller got only its own row.
    assert [len(b) for b in model.batches] == [1, 4]
    assert float(model.batches[1][3, 0]) == 0.0
    for i, result in enumerate(results[1:]):
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2.0 * (i + 1), dtype=np.float32))
    assert stats.inference_count == 4  # rows served, not padding
    await batcher.stop()

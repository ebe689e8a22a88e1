"""Dynamic batching: one bounded priority queue per model version, merged into model runs.

A scheduler task takes a free model instance first and only then forms a batch. While every
instance is busy, requests pile up in the queue, so the next batch is larger exactly when
the model is the bottleneck; when it is idle, a request waits at most `max_queue_delay`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from inference import tracing
from inference.errors import DeadlineExceeded, InternalError, Unavailable
from inference.stats import ModelStats

log = logging.getLogger("inference.batching")

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int  # rows per model run; 0 = the model does not batch, one request per run
    merge: bool  # False: each request runs alone, with the batch the client sent
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int  # requests waiting (not rows); beyond it the request is refused
    default_timeout_s: float | None
    allow_timeout_override: bool
    priority_levels: int  # 1 = highest; requests without one get default_priority
    default_priority: int
    instances: int  # model runs in flight at once
    # Pad merged batches up to these sizes (GPU: each new shape costs a kernel search); empty = never pad.
    pad_buckets: tuple[int, ...] = ()


@dataclass(order=True)
class _Pending:
    priority: int
    seq: int
    inputs: dict[str, np.ndarray] = field(compare=False)
    rows: int = field(compare=False)
    shape_key: tuple[object, ...] = field(compare=False)
    future: asyncio.Future[dict[str, np.ndarray]] = field(compare=False)
    enqueued_ns: int = field(compare=False)
    trace: tracing.SpanContext | None = field(default=None, compare=False)  # the request's span, when traced


def _shape_key(inputs: dict[str, np.ndarray]) -> tuple[object, ...]:
    """Requests merge only when every input agrees beyond the batch dimension."""
    return tuple(sorted((name, a.shape[1:], a.dtype.str) for name, a in inputs.items()))


class DynamicBatcher:
    def __init__(self, policy: BatchPolicy, run: RunFn, executor: Executor, stats: ModelStats) -> None:
        self.policy = policy
        self._run = run
        self._executor = executor
        self._stats = stats
        self._heap: list[_Pending] = []
        self._seq = itertools.count()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.instances)
        self._running: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{self._stats.name}")

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Take no more requests, give the queued ones up to `drain_timeout_s` to be served,
        refuse the rest, and wait for the runs in progress."""
        self._closed = True
        deadline = time.perf_counter() + drain_timeout_s
        # Polling keeps the scheduler free of shutdown logic; a stop is rare and the wait short.
        while self._peek_live() is not None and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
        while self._heap:
            item = heapq.heappop(self._heap)
            if not item.future.done():
                item.future.set_exception(self._unloaded())
        self._stats.queue_depth = 0
        await asyncio.gather(*self._running, return_exceptions=True)

    def _unloaded(self) -> Unavailable:
        return Unavailable(f"model {self._stats.name!r} version {self._stats.version} was unloaded")

    @property
    def depth(self) -> int:
        return len(self._heap)

    async def submit(
        self, inputs: dict[str, np.ndarray], priority: int | None = None, timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs (rows in the order given)."""
        policy = self.policy
        if self._closed:
            raise self._unloaded()
        if len(self._heap) >= policy.max_queue_size:
            # Timed-out and abandoned requests leave the heap lazily; they must not count here.
            self._heap = [item for item in self._heap if not item.future.done()]
            heapq.heapify(self._heap)
            self._stats.queue_depth = len(self._heap)
        if len(self._heap) >= policy.max_queue_size:
            raise Unavailable(
                f"model {self._stats.name!r} version {self._stats.version}: queue is full ({policy.max_queue_size} requests waiting)"
            )
        # As in Triton, a priority of 0 or beyond the model's levels means the default level.
        level = priority if priority is not None and 1 <= priority <= policy.priority_levels else policy.default_priority
        rows = next(iter(inputs.values())).shape[0] if policy.max_batch_size > 0 else 1
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        item = _Pending(level, next(self._seq), inputs, rows, _shape_key(inputs), future, time.perf_counter_ns(),
                        tracing.current())
        heapq.heappush(self._heap, item)
        self._stats.queue_depth = len(self._heap)
        self._arrived.set()
        timeout = timeout_s if timeout_s is not None and policy.allow_timeout_override else policy.default_timeout_s
        try:
            # Cancelling the future (timeout, client gone) tells the scheduler to skip the request.
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:  # only with a timeout: wait_for(future, None) never raises it
            raise DeadlineExceeded(f"request timed out after {(timeout or 0) * 1000:.0f} ms before model {self._stats.name!r} answered") from None

    def _pop_live(self) -> _Pending | None:
        while self._heap:
            item = heapq.heappop(self._heap)
            self._stats.queue_depth = len(self._heap)
            if not item.future.done():
                return item
        return None

    def _peek_live(self) -> _Pending | None:
        while self._heap and self._heap[0].future.done():
            heapq.heappop(self._heap)
            self._stats.queue_depth = len(self._heap)
        return self._heap[0] if self._heap else None

    async def _next(self) -> _Pending:
        while True:
            item = self._pop_live()
            if item is not None:
                return item
            self._arrived.clear()
            await self._arrived.wait()

    async def _schedule(self) -> None:
        policy = self.policy
        while True:
            await self._slots.acquire()
            try:
                batch = [await self._next()]
                if policy.merge:
                    await self._fill(batch)
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _fill(self, batch: list[_Pending]) -> None:
        """Add compatible requests until the batch is full, or preferred and nothing more is
        waiting, or the first request has waited max_queue_delay."""
        policy = self.policy
        rows = batch[0].rows
        deadline = time.perf_counter() + policy.max_queue_delay_s
        while rows < policy.max_batch_size:
            head = self._peek_live()
            if head is not None:
                if head.shape_key != batch[0].shape_key or rows + head.rows > policy.max_batch_size:
                    return
                heapq.heappop(self._heap)
                self._stats.queue_depth = len(self._heap)
                batch.append(head)
                rows += head.rows
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or rows in policy.preferred_batch_sizes:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _pad_to(self, rows: int) -> int:
        return next((b for b in self.policy.pad_buckets if b >= rows), rows)

    async def _execute(self, batch: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        try:
            live = [item for item in batch if not item.future.done()]
            if not live:
                return
            for item in live:
                self._stats.queue.add(started - item.enqueued_ns)
            rows = sum(item.rows for item in live)
            merged, padded_rows = self._merge(live, rows)
            input_done = time.perf_counter_ns()
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, merged)
            except Exception:  # noqa: BLE001 - a failing model run fails its requests, not the server
                log.exception("model %s version %s failed a batch of %d", self._stats.name, self._stats.version, rows)
                for item in live:
                    if not item.future.done():
                        # The exception's text stays in the log: it may name paths and internals.
                        item.future.set_exception(InternalError(f"model {self._stats.name!r} failed to run this batch; the server log says why"))
                return
            infer_done = time.perf_counter_ns()
            self._split(live, outputs, padded_rows)
            self._stats.record_batch(rows, len(live), input_done - started, infer_done - input_done, time.perf_counter_ns() - infer_done)
            if traced := [(item.trace, item.enqueued_ns) for item in live if item.trace is not None]:
                tracing.batch_spans(traced, started, input_done, infer_done, {
                    "model": self._stats.name, "model.version": str(self._stats.version),
                    "batch.rows": rows, "batch.requests": len(live)})
        finally:
            self._slots.release()

    def _merge(self, live: list[_Pending], rows: int) -> tuple[dict[str, np.ndarray], int]:
        if len(live) == 1 and not self.policy.pad_buckets:
            return live[0].inputs, rows
        target = self._pad_to(rows) if self.policy.max_batch_size > 0 else rows
        merged: dict[str, np.ndarray] = {}
        for name in live[0].inputs:
            parts = [item.inputs[name] for item in live]
            if target > rows:
                first = parts[0]
                parts.append(np.zeros((target - rows, *first.shape[1:]), dtype=first.dtype))
            merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return merged, target

    def _split(self, live: list[_Pending], outputs: dict[str, np.ndarray], padded_rows: int) -> None:
        if len(live) == 1 and padded_rows == live[0].rows:
            if not live[0].future.done():
                live[0].future.set_result(outputs)
            return
        offset = 0
        for item in live:
            piece = {name: array[offset : offset + item.rows] for name, array in outputs.items()}
            offset += item.rows
            if not item.future.done():
                item.future.set_result(piece)

"""Per model-version counters, kept in the shape of Triton's statistics extension.

One `ModelStats` feeds both `/v2/models/{m}/stats` (JSON, nanoseconds) and `/metrics`
(Prometheus, microseconds), so the two can never disagree. Everything is updated from
the event loop thread only, hence no locks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Upper bounds of the batch-size histogram; powers of two match the batch buckets we warm.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# Triton's failure reasons (the `reason` label of nv_inference_request_failure).
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    name: str
    version: int
    last_inference_ms: int = 0
    inference_count: int = 0  # rows (batch elements) inferred
    execution_count: int = 0  # model runs; below inference_count when batching merges requests
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    # Cumulative counts per BATCH_SIZE_BUCKETS bound (+Inf last), and the sum of sizes.
    batch_size_buckets: list[int] = field(default_factory=lambda: [0] * (len(BATCH_SIZE_BUCKETS) + 1))
    batch_size_sum: int = 0
    queue_depth: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))

    def record_success(self, ns: int) -> None:
        self.success.add(ns)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, reason: str, ns: int) -> None:
        self.fail.add(ns)
        self.failures[reason] += 1

    def record_batch(self, size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One model execution of `size` rows serving `requests` requests. As in Triton, each
        request is charged the whole batch's durations, so ns / count is the per-request mean."""
        self.execution_count += 1
        self.inference_count += size
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        batch = self.batches.setdefault(size, BatchStats())
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)
        for i, bound in enumerate(BATCH_SIZE_BUCKETS):
            if size <= bound:
                self.batch_size_buckets[i] += 1
        self.batch_size_buckets[-1] += 1
        self.batch_size_sum += size

    def to_json(self) -> dict[str, object]:
        """Triton's ModelStatistics JSON."""
        return {
            "name": self.name,
            "version": str(self.version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(),
                "fail": self.fail.to_json(),
                "queue": self.queue.to_json(),
                "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": self.cache_hit.to_json(),
                "cache_miss": self.cache_miss.to_json(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.to_json(),
                    "compute_infer": b.compute_infer.to_json(),
                    "compute_output": b.compute_output.to_json(),
                }
                for size, b in sorted(self.batches.items())
            ],
        }

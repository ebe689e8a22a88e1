"""`/metrics`: the Prometheus text exposition of every loaded version's counters.

Names follow Triton's so that dashboards written for Triton work unchanged; durations are
cumulative microseconds, as Triton exports them (rate() them for a mean).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from inference.stats import BATCH_SIZE_BUCKETS, ModelStats

CONTENT_TYPE = "text/plain; version=0.0.4"

_Family = tuple[str, str, str, Callable[[ModelStats], int | float]]

_FAMILIES: list[_Family] = [
    ("nv_inference_request_success", "counter", "Successful inference requests, all batch sizes", lambda s: s.success.count),
    ("nv_inference_count", "counter", "Inferences performed (batch elements, not requests)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "counter", "Model executions (batches run)", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "counter", "Cumulative end-to-end request time in the server",
     lambda s: s.success.ns // 1000 + s.fail.ns // 1000),
    ("nv_inference_queue_duration_us", "counter", "Cumulative time requests waited in the batching queue", lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us", "counter", "Cumulative time merging inputs into batches", lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative time running the model", lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us", "counter", "Cumulative time splitting outputs back to requests",
     lambda s: s.compute_output.ns // 1000),
    ("nv_inference_pending_request_count", "gauge", "Requests waiting in the batching queue now", lambda s: s.queue_depth),
    ("nv_cache_num_hits_per_model", "counter", "Response cache hits", lambda s: s.cache_hit.count),
    ("nv_cache_num_misses_per_model", "counter", "Response cache misses", lambda s: s.cache_miss.count),
]


def _labels(stats: ModelStats, **extra: str) -> str:
    pairs = {"model": stats.name, "version": str(stats.version), **extra}
    return ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(all_stats: Iterable[ModelStats]) -> str:
    stats = list(all_stats)
    lines: list[str] = []
    for name, kind, help_text, value in _FAMILIES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{_labels(s)}}} {value(s)}" for s in stats]

    lines += ["# HELP nv_inference_request_failure Failed inference requests, by reason", "# TYPE nv_inference_request_failure counter"]
    for s in stats:
        lines += [f"nv_inference_request_failure{{{_labels(s, reason=r)}}} {n}" for r, n in s.failures.items()]

    name = "nv_inference_batch_size"
    lines += [f"# HELP {name} Rows per model execution", f"# TYPE {name} histogram"]
    for s in stats:
        bounds = [str(b) for b in BATCH_SIZE_BUCKETS] + ["+Inf"]
        lines += [f"{name}_bucket{{{_labels(s, le=le)}}} {n}" for le, n in zip(bounds, s.batch_size_buckets, strict=True)]
        lines += [f"{name}_sum{{{_labels(s)}}} {s.batch_size_sum}", f"{name}_count{{{_labels(s)}}} {s.execution_count}"]
    return "\n".join(lines) + "\n"

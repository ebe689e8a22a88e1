"""The engine's counters, exported under vLLM's metric names so that endpoint pickers and
autoscalers written for vLLM (Gateway API Inference Extension, llm-d, KEDA rules) read a sluice
backend unchanged. Each family carries `model_name`, as vLLM's do."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        out += [f"{name}_sum{{{labels}}} {self.total}", f"{name}_count{{{labels}}} {self.count}"]
        return out


@dataclass
class GenerationStats:
    model: str
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of those, tokens found there
    preemptions: int = 0
    finished: Counter[str] = field(default_factory=Counter)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))


@dataclass(frozen=True)
class Load:
    """What a scheduler reads: the same numbers feed /metrics and the ORCA header."""

    running: int
    waiting: int
    kv_cache_usage: float
    max_num_seqs: int
    rps: float = 0.0  # requests finished per second, lately

    def utilization(self) -> float:
        """One number for balancers that take one (ORCA application_utilization): the busier of
        the KV cache and the sequence slots, counting waiting requests as demand on the slots."""
        return max(self.kv_cache_usage, (self.running + self.waiting) / self.max_num_seqs)

    def orca(self) -> str:
        """ORCA `endpoint-load-metrics` in its TEXT form, as Envoy's ORCA parser reads it."""
        return (
            f"TEXT application_utilization={self.utilization():.4f}, rps_fractional={self.rps:.3f}, "
            f"named_metrics.running={self.running}, "
            f"named_metrics.waiting={self.waiting}, named_metrics.kv_cache_usage={self.kv_cache_usage:.4f}"
        )


def render(entries: list[tuple[GenerationStats, Load]]) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, values: list[str]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *values])

    def label(stats: GenerationStats) -> str:
        return f'model_name="{stats.model}"'

    family("vllm:num_requests_running", "gauge", "Requests in the running batch (prefilling or decoding).",
           [f"vllm:num_requests_running{{{label(s)}}} {load.running}" for s, load in entries])
    family("vllm:num_requests_waiting", "gauge", "Requests waiting for a place in the batch.",
           [f"vllm:num_requests_waiting{{{label(s)}}} {load.waiting}" for s, load in entries])
    family("vllm:kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use (1 = full).",
           [f"vllm:kv_cache_usage_perc{{{label(s)}}} {load.kv_cache_usage}" for s, load in entries])
    counters: tuple[tuple[str, str, Callable[[GenerationStats], int]], ...] = (
        ("vllm:prompt_tokens_total", "Prompt tokens processed.", lambda s: s.prompt_tokens),
        ("vllm:generation_tokens_total", "Tokens generated.", lambda s: s.generation_tokens),
        ("vllm:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", lambda s: s.prefix_queries),
        ("vllm:prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", lambda s: s.prefix_hits),
        ("vllm:num_preemptions_total", "Sequences preempted for lack of KV-cache blocks.", lambda s: s.preemptions),
    )
    for name, help_text, value in counters:
        family(name, "counter", help_text, [f"{name}{{{label(s)}}} {value(s)}" for s, _ in entries])
    family("vllm:request_success_total", "counter", "Finished requests, by finish reason.",
           [f'vllm:request_success_total{{{label(s)},finished_reason="{reason}"}} {n}'
            for s, _ in entries for reason, n in sorted(s.finished.items())])
    histograms: tuple[tuple[str, str, Callable[[GenerationStats], Histogram]], ...] = (
        ("vllm:time_to_first_token_seconds", "Time to first token.", lambda s: s.ttft),
        ("vllm:inter_token_latency_seconds", "Time between consecutive output tokens.", lambda s: s.itl),
        ("vllm:e2e_request_latency_seconds", "End-to-end request latency.", lambda s: s.e2e),
        ("vllm:request_queue_time_seconds", "Time spent waiting before the first prefill step.", lambda s: s.queue_time),
    )
    for name, help_text, hist in histograms:
        family(name, "histogram", help_text, [line for s, _ in entries for line in hist(s).lines(name, label(s))])
    return "\n".join(lines) + "\n"

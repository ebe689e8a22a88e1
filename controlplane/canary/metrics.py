"""Per-cluster request counts and latency histograms, read from each Envoy's admin endpoint.

Envoy's metrics_service stat sink would push these, but its protos (envoy.service.metrics.v3)
are not in the xds-protos package, so the controller reads `/stats/prometheus` instead: the
fallback the design allows. `stats_flush_on_admin` in the bootstrap keeps the histograms
current: with it, Envoy merges histograms when `/stats` is read (but not `/stats/prometheus`),
so each read asks `/stats` for nothing first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import aiohttp

_LINE = re.compile(r'^(envoy_cluster_upstream_rq_xx|envoy_cluster_upstream_rq_time_bucket)\{([^}]*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass
class Sample:
    """Cumulative counters of one cluster (summed over Envoys)."""

    responses: float = 0.0
    errors: float = 0.0  # 5xx, including Envoy's own 503s for upstream failures
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (ms) -> cumulative count

    def add(self, other: Sample) -> None:
        self.responses += other.responses
        self.errors += other.errors
        for bound, count in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + count


@dataclass(frozen=True)
class Window:
    requests: int
    success_rate: float | None
    p99_ms: float | None  # the upper bound of the histogram bucket holding the 99th percentile


def parse(text: str, clusters: set[str]) -> dict[str, Sample]:
    out = {c: Sample() for c in clusters}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        sample = out.get(labels.get("envoy_cluster_name", ""))
        if sample is None:
            continue
        value = float(m.group(3))
        if m.group(1) == "envoy_cluster_upstream_rq_xx":
            sample.responses += value
            if labels.get("envoy_response_code_class") == "5":
                sample.errors += value
        else:
            bound = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            sample.buckets[bound] = sample.buckets.get(bound, 0.0) + value
    return out


def window(before: Sample, after: Sample) -> Window:
    responses = max(0.0, after.responses - before.responses)
    errors = max(0.0, after.errors - before.errors)
    if responses == 0:
        return Window(0, None, None)
    counts = sorted((bound, max(0.0, n - before.buckets.get(bound, 0.0))) for bound, n in after.buckets.items())
    total = counts[-1][1] if counts else 0.0
    p99 = next((bound for bound, n in counts if total and n >= 0.99 * total), None)
    return Window(int(responses), 1 - errors / responses, p99)


async def read(session: aiohttp.ClientSession, admin_addresses: list[str], clusters: set[str]
               ) -> dict[str, dict[str, Sample]]:
    """Samples per Envoy (keyed by admin address); an Envoy that cannot be read is left out."""
    pattern = "|".join(re.escape(f"cluster.{c}.") for c in sorted(clusters))
    out: dict[str, dict[str, Sample]] = {}
    for address in admin_addresses:
        try:
            async with session.get(f"http://{address}/stats", params={"filter": "^$"}) as r:
                await r.read()
            async with session.get(f"http://{address}/stats/prometheus", params={"filter": pattern}) as r:
                out[address] = parse(await r.text(), clusters)
        except (aiohttp.ClientError, TimeoutError):
            continue
    return out


def between(before: dict[str, dict[str, Sample]], after: dict[str, dict[str, Sample]], cluster: str) -> Window:
    """The window over all Envoys; an Envoy seen only at the end (new or restarted) counts from zero."""
    start, end = Sample(), Sample()
    for address, samples in after.items():
        previous = before.get(address, {}).get(cluster, Sample())
        current = samples[cluster]
        if current.responses < previous.responses:  # the Envoy restarted: its counters did too
            previous = Sample()
        start.add(previous)
        end.add(current)
    return window(start, end)

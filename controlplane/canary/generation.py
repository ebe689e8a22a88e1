"""Time to first token and time per output token of a backend, from its own vLLM-named
histograms (`/metrics` on each endpoint): the generative gates' figures.

The edge's GenAI metrics would see the same requests through Envoy; these are read from
the backends because they are there for any vLLM-compatible server, and because in the
shadow stage the candidate's only traffic is the comparator's, which the edge never sees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp

_LINE = re.compile(r"^vllm:(time_to_first_token_seconds|inter_token_latency_seconds)_(sum|count)(?:\{[^}]*\})? (\S+)$")


@dataclass(frozen=True)
class Timings:
    """Cumulative sums and counts over a backend's endpoints."""

    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    tpot_sum: float = 0.0
    tpot_count: float = 0.0

    def __add__(self, other: Timings) -> Timings:
        return Timings(self.ttft_sum + other.ttft_sum, self.ttft_count + other.ttft_count,
                       self.tpot_sum + other.tpot_sum, self.tpot_count + other.tpot_count)

    def __sub__(self, other: Timings) -> Timings:
        return Timings(self.ttft_sum - other.ttft_sum, self.ttft_count - other.ttft_count,
                       self.tpot_sum - other.tpot_sum, self.tpot_count - other.tpot_count)


@dataclass(frozen=True)
class GenWindow:
    generations: int
    ttft_ms: float | None  # mean over the window
    tpot_ms: float | None


def parse(text: str) -> Timings:
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is not None:
            key = f"{m.group(1)}_{m.group(2)}"
            values[key] = values.get(key, 0.0) + float(m.group(3))
    return Timings(values.get("time_to_first_token_seconds_sum", 0.0),
                   values.get("time_to_first_token_seconds_count", 0.0),
                   values.get("inter_token_latency_seconds_sum", 0.0),
                   values.get("inter_token_latency_seconds_count", 0.0))


async def read(session: aiohttp.ClientSession, endpoints: list[str]) -> dict[str, Timings]:
    """Per endpoint (host:port); an endpoint that cannot be read is left out."""
    out: dict[str, Timings] = {}
    for endpoint in endpoints:
        try:
            async with session.get(f"http://{endpoint}/metrics") as r:
                if r.status == 200:
                    out[endpoint] = parse(await r.text())
        except (aiohttp.ClientError, TimeoutError):
            continue
    return out


def between(before: dict[str, Timings], after: dict[str, Timings]) -> GenWindow:
    """The window over all endpoints; an endpoint whose counts went back (restarted) counts from zero."""
    total = Timings()
    for endpoint, now in after.items():
        then = before.get(endpoint, Timings())
        total = total + (now - then if now.ttft_count >= then.ttft_count else now)
    return GenWindow(int(total.ttft_count),
                     1000 * total.ttft_sum / total.ttft_count if total.ttft_count > 0 else None,
                     1000 * total.tpot_sum / total.tpot_count if total.tpot_count > 0 else None)

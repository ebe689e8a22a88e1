"""The load a KServe v2 server reports with every answer (ORCA `endpoint-load-metrics`) and on /metrics.

A balancer in front of several replicas reads these reports to send less to the busier ones.
Envoy's `client_side_weighted_round_robin` weighs an endpoint by
`rps_fractional / application_utilization`; with utilization the mean number of requests in
flight over capacity, that weight is capacity over mean latency (Little's law), so a replica
that answers slower gets proportionally less, whatever its share of traffic is today.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

ORCA_HEADER = "endpoint-load-metrics"

# Averages follow the last second or so: long enough to smooth bursts, short enough that a
# replica which slows down is seen within a few of Envoy's one-second weight updates.
WINDOW_S = 1.0


@dataclass(frozen=True)
class LoadReport:
    waiting: int  # requests queued for a model run
    running: int  # requests admitted and not queued (in a model run, decoding, encoding)
    utilization: float  # mean requests in flight over the window / capacity
    rps: float  # requests finished per second over the window

    def orca(self) -> str:
        """ORCA `endpoint-load-metrics` in its TEXT form (Envoy's parser reads it); the named
        metrics use the generative engine's names, so one reader serves both kinds of backend."""
        return (
            f"TEXT application_utilization={self.utilization:.4f}, rps_fractional={self.rps:.3f}, "
            f"named_metrics.waiting={self.waiting}, named_metrics.running={self.running}"
        )


class LoadMeter:
    """Requests in flight, their time-weighted mean and the finish rate, as exponentially
    decaying averages: O(1) state, updated on each start and finish."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        assert window_s > 0
        self.window_s = window_s
        self.in_flight = 0
        self._mean_in_flight = 0.0
        self._rate = 0.0
        self._at = time.monotonic()

    def _advance(self, now: float) -> None:
        decay = math.exp(-max(0.0, now - self._at) / self.window_s)
        self._mean_in_flight = self.in_flight + (self._mean_in_flight - self.in_flight) * decay
        self._rate *= decay
        self._at = now

    def started(self) -> None:
        self._advance(time.monotonic())
        self.in_flight += 1

    def finished(self) -> None:
        self._advance(time.monotonic())
        assert self.in_flight > 0
        self.in_flight -= 1
        self._rate += 1.0 / self.window_s

    def rate(self) -> float:
        """Requests finished per second, over about the last window."""
        self._advance(time.monotonic())
        return self._rate

    def report(self, waiting: int, capacity: int) -> LoadReport:
        """`waiting`: requests queued now; `capacity`: requests in flight that count as fully busy."""
        assert capacity > 0
        rps = self.rate()
        return LoadReport(
            waiting=waiting,
            running=max(0, self.in_flight - waiting),
            utilization=self._mean_in_flight / capacity,
            rps=rps,
        )


def render(report: LoadReport) -> str:
    """The same figures as the ORCA header, in the Prometheus text format (appended to /metrics)."""
    families = (
        ("sluice_backend_requests_waiting", "Requests queued for a model run now (ORCA named_metrics.waiting).", report.waiting),
        ("sluice_backend_requests_running", "Requests admitted and not queued now (ORCA named_metrics.running).", report.running),
        ("sluice_backend_load_utilization", "Mean requests in flight over the last second / capacity "
                                            "(ORCA application_utilization).", round(report.utilization, 4)),
        ("sluice_backend_requests_per_second", "Requests finished per second, last second (ORCA rps_fractional).",
         round(report.rps, 3)),
    )
    lines: list[str] = []
    for name, help_text, value in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    return "\n".join(lines) + "\n"

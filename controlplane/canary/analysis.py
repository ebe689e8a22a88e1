"""The verdict on one analysis window. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from controlplane.canary.metrics import Window
from controlplane.policy import Thresholds


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def judge(canary: Window, thresholds: Thresholds) -> Judgement:
    if canary.requests < thresholds.min_requests or canary.success_rate is None:
        return Judgement(Verdict.INCONCLUSIVE,
                         f"{canary.requests} canary requests, fewer than {thresholds.min_requests}")
    if canary.success_rate < thresholds.min_success_rate:
        return Judgement(Verdict.FAIL, f"success rate {canary.success_rate:.2%} < {thresholds.min_success_rate:.2%}")
    if thresholds.max_p99_ms is not None and canary.p99_ms is not None and canary.p99_ms > thresholds.max_p99_ms:
        return Judgement(Verdict.FAIL, f"p99 {canary.p99_ms:g} ms > {thresholds.max_p99_ms:g} ms")
    p99 = "n/a" if canary.p99_ms is None else f"{canary.p99_ms:g} ms"
    return Judgement(Verdict.PASS, f"success rate {canary.success_rate:.2%}, p99 ≤ {p99}, {canary.requests} requests")

"""The verdict on one analysis window, and the gate that gave it. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from controlplane.canary.generation import GenWindow
from controlplane.canary.metrics import Window
from controlplane.policy import Thresholds
from controlplane.policy.canary import Shadow
from controlplane.shadow.server import Tally


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    gate: str | None = None  # the gate that decided a failure or an inconclusive window


def judge(canary: Window, thresholds: Thresholds, stable: Window | None = None) -> Judgement:
    """Absolute thresholds, then the gates relative to stable's figures in the same window
    (skipped when stable itself had too little traffic, as at weight 100)."""
    if canary.requests < thresholds.min_requests or canary.success_rate is None:
        return Judgement(Verdict.INCONCLUSIVE,
                         f"{canary.requests} canary requests, fewer than {thresholds.min_requests}",
                         "thresholds.min_requests")
    if canary.success_rate < thresholds.min_success_rate:
        return Judgement(Verdict.FAIL, f"success rate {canary.success_rate:.2%} < {thresholds.min_success_rate:.2%}",
                         "thresholds.min_success_rate")
    if thresholds.max_p99_ms is not None and canary.p99_ms is not None and canary.p99_ms > thresholds.max_p99_ms:
        return Judgement(Verdict.FAIL, f"p99 {canary.p99_ms:g} ms > {thresholds.max_p99_ms:g} ms",
                         "thresholds.max_p99_ms")
    p99 = "n/a" if canary.p99_ms is None else f"{canary.p99_ms:g} ms"
    passed = f"success rate {canary.success_rate:.2%}, p99 ≤ {p99}, {canary.requests} requests"
    if stable is None or stable.requests < thresholds.min_requests or stable.success_rate is None:
        return Judgement(Verdict.PASS, passed)
    drop = stable.success_rate - canary.success_rate
    if thresholds.max_success_rate_drop is not None and drop > thresholds.max_success_rate_drop:
        return Judgement(Verdict.FAIL, f"success rate {canary.success_rate:.2%} is {drop:.2%} below stable's "
                         f"{stable.success_rate:.2%} (at most {thresholds.max_success_rate_drop:.2%})",
                         "thresholds.max_success_rate_drop")
    if thresholds.max_p99_ratio is not None and canary.p99_ms is not None and stable.p99_ms is not None:
        limit = max(stable.p99_ms * thresholds.max_p99_ratio, stable.p99_ms + thresholds.p99_tolerance_ms)
        if canary.p99_ms > limit:
            return Judgement(Verdict.FAIL, f"p99 {canary.p99_ms:g} ms is {canary.p99_ms / stable.p99_ms:.2f}x "
                             f"stable's {stable.p99_ms:g} ms (at most {thresholds.max_p99_ratio:g}x)",
                             "thresholds.max_p99_ratio")
    stable_p99 = "n/a" if stable.p99_ms is None else f"{stable.p99_ms:g} ms"
    return Judgement(Verdict.PASS, f"{passed}; stable {stable.success_rate:.2%}, p99 ≤ {stable_p99}")


def judge_shadow(tally: Tally, shadow: Shadow) -> Judgement:
    """The candidate's answers against stable's to the same mirrored requests."""
    attempts = tally.compared + tally.candidate_errors + tally.incomparable
    if attempts < shadow.min_comparisons:
        dropped = f" ({tally.dropped} dropped: comparator full)" if tally.dropped else ""
        return Judgement(Verdict.INCONCLUSIVE, f"{attempts} comparisons, fewer than {shadow.min_comparisons}{dropped}",
                         "shadow.min_comparisons")
    errors = tally.error_rate or 0.0
    if errors > shadow.max_error_rate:
        return Judgement(Verdict.FAIL, f"candidate failed {errors:.2%} of comparisons stable answered "
                         f"(at most {shadow.max_error_rate:.2%})", "shadow.max_error_rate")
    agreement, c = tally.agreement, tally.comparison
    if agreement is not None and agreement < shadow.min_agreement:
        what = "exact-match rate" if c.generations else "argmax agreement"
        return Judgement(Verdict.FAIL, f"{what} {agreement:.2%} < {shadow.min_agreement:.2%} over {attempts} "
                         "comparisons", "shadow.min_agreement")
    if shadow.max_abs_diff is not None and c.rows and c.max_abs_diff > shadow.max_abs_diff:
        return Judgement(Verdict.FAIL, f"max |difference| {c.max_abs_diff:.3g} > {shadow.max_abs_diff:.3g}",
                         "shadow.max_abs_diff")
    if shadow.min_cosine is not None and c.rows and c.min_cosine < shadow.min_cosine:
        return Judgement(Verdict.FAIL, f"cosine similarity {c.min_cosine:.4f} < {shadow.min_cosine:.4f}",
                         "shadow.min_cosine")
    shown = "n/a" if agreement is None else f"{agreement:.2%}"
    return Judgement(Verdict.PASS, f"agreement {shown} over {attempts} comparisons")


def judge_generation(stable: GenWindow, canary: GenWindow, thresholds: Thresholds) -> Judgement:
    """Mean time to first token and per output token, as ratios to stable's in the same window."""
    fewest = min(stable.generations, canary.generations)
    if fewest < thresholds.min_generations:
        return Judgement(Verdict.INCONCLUSIVE, f"{canary.generations} canary and {stable.generations} stable "
                         f"generations, fewer than {thresholds.min_generations}", "thresholds.min_generations")
    for gate, limit, ours, theirs, what in (
            ("thresholds.max_ttft_ratio", thresholds.max_ttft_ratio, canary.ttft_ms, stable.ttft_ms, "TTFT"),
            ("thresholds.max_tpot_ratio", thresholds.max_tpot_ratio, canary.tpot_ms, stable.tpot_ms,
             "time per output token")):
        if limit is not None and ours is not None and theirs and ours / theirs > limit:
            return Judgement(Verdict.FAIL, f"mean {what} {ours:.1f} ms is {ours / theirs:.2f}x stable's "
                             f"{theirs:.1f} ms (at most {limit:g}x)", gate)
    return Judgement(Verdict.PASS, f"TTFT {canary.ttft_ms or 0:.1f} ms vs stable {stable.ttft_ms or 0:.1f} ms")


def combined(judgements: list[Judgement]) -> Judgement:
    """A failure decides; else too little data; else a pass of every gate."""
    for verdict in (Verdict.FAIL, Verdict.INCONCLUSIVE):
        found = next((j for j in judgements if j.verdict is verdict), None)
        if found is not None:
            return found
    return Judgement(Verdict.PASS, "; ".join(j.reason for j in judgements))

"""Canary releases as operators declare them, and the status the controller keeps."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, model_validator

from controlplane.policy.model import HashOn, HeaderMatch, Name, Strict

Percent = Annotated[int, Field(ge=1, le=100)]


class Thresholds(Strict):
    min_success_rate: Annotated[float, Field(ge=0, le=1, description="of canary requests, per window")] = 0.99
    max_p99_ms: Annotated[float | None, Field(gt=0, description="canary p99 latency per window; null: no check")] = 500
    min_requests: Annotated[int, Field(
        ge=1, description="fewer canary requests in a window make it inconclusive: never a pass")] = 20
    # Relative gates: the canary against the stable version in the same window.
    max_success_rate_drop: Annotated[float | None, Field(
        ge=0, le=1, description="stable's success rate minus the canary's, per window; null: no check")] = None
    max_p99_ratio: Annotated[float | None, Field(
        ge=1, description="canary p99 / stable p99 per window; null: no check")] = None
    p99_tolerance_ms: Annotated[float, Field(
        ge=0, description="a p99 within this of stable's passes the ratio (histogram buckets are coarse)")] = 5.0
    max_ttft_ratio: Annotated[float | None, Field(
        ge=1, description="generative: canary mean time to first token / stable's, from the backends' "
                          "vllm:time_to_first_token_seconds; null: no check")] = None
    max_tpot_ratio: Annotated[float | None, Field(
        ge=1, description="generative: canary mean time per output token / stable's, from the backends' "
                          "vllm:inter_token_latency_seconds; null: no check")] = None
    min_generations: Annotated[int, Field(
        ge=1, description="fewer generations on either side make the TTFT/TPOT gates inconclusive")] = 5


class Shadow(Strict):
    """Before any live weight: compare the candidate's answers with stable's on a mirrored share of traffic."""

    percent: Annotated[float, Field(gt=0, le=100, description="share of the route's requests mirrored")] = 10.0
    windows: Annotated[int, Field(ge=1, le=1000, description="passing windows before the next stage")] = 3
    min_comparisons: Annotated[int, Field(
        ge=1, description="fewer compared requests in a window make it inconclusive")] = 20
    min_agreement: Annotated[float, Field(
        ge=0, le=1, description="argmax agreement (tensors) or exact-match rate (generation), per window")] = 0.995
    max_abs_diff: Annotated[float | None, Field(
        ge=0, description="tensors: largest absolute difference of any output value; null: no check")] = None
    min_cosine: Annotated[float | None, Field(
        ge=-1, le=1, description="embeddings and tensors: lowest cosine similarity of a row; null: no check")] = None
    max_error_rate: Annotated[float, Field(
        ge=0, le=1, description="comparisons where the candidate failed but stable answered")] = 0.01


class Webhooks(Strict):
    """Gates must answer 2xx for the canary to proceed; notifications are best effort."""

    pre_rollout: AnyHttpUrl | None = None
    pre_promotion: AnyHttpUrl | None = None
    on_rollback: AnyHttpUrl | None = None
    on_success: AnyHttpUrl | None = None
    on_pause: Annotated[AnyHttpUrl | None, Field(description="told when inconclusive windows pause a canary")] = None
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0


class Canary(Strict):
    """Shift a route's traffic from `stable` to `canary`, step by step, gated on live metrics."""

    service: Name
    route: Name
    stable: Name
    canary: Name
    steps: Annotated[list[Percent] | None, Field(max_length=100, description="canary weights in order")] = None
    step_weight: Percent | None = None
    max_weight: Percent = 100
    interval_s: Annotated[float, Field(ge=0.5, le=86400, description="analysis window per step")] = 60.0
    step_windows: Annotated[int, Field(ge=1, le=1000, description="passing windows at each weighted step")] = 1
    thresholds: Thresholds = Thresholds()
    failure_limit: Annotated[int, Field(ge=1, le=100, description="failed windows before rollback")] = 1
    match: Annotated[list[HeaderMatch], Field(
        max_length=8, description="requests matching these headers go to the canary from the start (A/B first)")] = []
    sticky: HashOn | None = Field(None, description=(
        "keep each user on one version while the canary runs: the split is chosen by hashing this "
        "(a cookie with cookie_ttl_s is set by Envoy for users who lack it, or a header such as a user id)"))
    webhooks: Webhooks = Webhooks()
    shadow: Annotated[Shadow | None, Field(description="a shadow stage before any live weight")] = None
    ab_windows: Annotated[int, Field(
        ge=0, le=1000, description="an A/B stage of this many passing windows before the weighted steps, in which "
                                   "only requests matching `match` reach the canary; 0: none")] = 0
    inconclusive_limit: Annotated[int, Field(
        ge=1, le=1000, description="inconclusive windows in a row (too little traffic) that pause the canary")] = 3
    ready_timeout_s: Annotated[float, Field(
        gt=0, le=86400, description="a canary not ready this long after it was created is rolled back")] = 300.0
    readiness_path: Annotated[str, Field(
        pattern=r"^/", description="GET on each canary endpoint: 2xx from one means ready "
                                  "(KServe v2; vLLM answers /health)")] = "/v2/health/ready"

    @model_validator(mode="after")
    def _steps(self) -> Canary:
        if (self.steps is None) == (self.step_weight is None):
            raise ValueError("set exactly one of steps, step_weight")
        if self.steps is not None and any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must increase")
        if self.stable == self.canary:
            raise ValueError("stable and canary must be different backends")
        if self.ab_windows and not self.match:
            raise ValueError("ab_windows needs match: which requests the A/B stage sends to the canary")
        return self

    def weights(self) -> list[int]:
        """The canary weight at each step; the last step is followed by promotion to 100."""
        if self.steps is not None:
            return list(self.steps)
        assert self.step_weight is not None
        out = list(range(self.step_weight, self.max_weight + 1, self.step_weight))
        return out if out and out[-1] == self.max_weight else [*out, self.max_weight]


State = Literal["pending", "progressing", "promoting", "succeeded", "rolled_back", "paused"]
Stage = Literal["shadow", "ab", "weighted"]
FINAL: frozenset[str] = frozenset({"succeeded", "rolled_back"})


class CanaryEvent(Strict):
    at: float
    state: State
    weight: int
    message: str
    gate: str | None = None  # the gate whose verdict this event is, e.g. shadow.min_agreement


class CanaryStatus(Strict):
    spec: str = ""  # a digest of the spec this status belongs to: a changed spec starts over
    state: State = "pending"
    stage: Stage | None = None  # None before the first stage
    step: int = -1  # index into Canary.weights(); -1 before the first step
    passed_windows: int = 0  # in the current stage (shadow, ab)
    inconclusive: int = 0  # inconclusive windows in a row
    weight: int = 0
    failed_checks: int = 0
    step_started_at: float = 0.0
    paused_state: State | None = None  # what resume returns to
    events: Annotated[list[CanaryEvent], Field(max_length=200)] = []


def shadow_backend_name(canary_name: str) -> str:
    """The Backend (Envoy cluster) a shadowing canary's route mirrors to: the comparator."""
    return f"{canary_name[:56]}-shadow"


def spec_key(canary: Canary) -> str:
    """The digest a status records of the spec it belongs to."""
    return hashlib.sha256(canary.model_dump_json().encode()).hexdigest()[:12]


def finished(canary: Canary, status: CanaryStatus | None) -> bool:
    """Succeeded or rolled back, for this very spec: such a canary no longer drives its route."""
    return status is not None and status.spec == spec_key(canary) and status.state in FINAL

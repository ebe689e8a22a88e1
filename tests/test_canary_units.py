"""Canary pieces that need no process: the spec's steps, window arithmetic, verdicts, actions."""

from __future__ import annotations

import math

import pytest
from policies import demo_policy

from controlplane.canary.analysis import Verdict, judge
from controlplane.canary.metrics import Sample, parse, window
from controlplane.canary.transitions import apply_weight, operate, weight_in_policy
from controlplane.policy import Canary, InvalidPolicy, Policy, Thresholds, parse_document, with_document

SPEC = {"service": "classifier", "route": "infer", "stable": "classifier-v1", "canary": "classifier-v2"}


def test_steps() -> None:
    assert Canary(**SPEC, step_weight=20).weights() == [20, 40, 60, 80, 100]
    assert Canary(**SPEC, step_weight=30, max_weight=50).weights() == [30, 50]
    assert Canary(**SPEC, steps=[1, 5, 10, 25, 50, 100]).weights() == [1, 5, 10, 25, 50, 100]
    with pytest.raises(InvalidPolicy, match="steps must increase"):
        parse_document({"kind": "Canary", "name": "c", "spec": {**SPEC, "steps": [10, 5]}})
    with pytest.raises(InvalidPolicy, match="exactly one of steps, step_weight"):
        parse_document({"kind": "Canary", "name": "c", "spec": SPEC})


def test_window_and_p99_from_histogram_deltas() -> None:
    text = "\n".join([
        'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="b"} 90',
        'envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="b"} 10',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="b",le="5"} 50',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="b",le="500"} 98',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="b",le="1000"} 100',
        'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="b",le="+Inf"} 100',
        'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="other"} 7',
    ])
    after = parse(text, {"b"})["b"]
    assert (after.responses, after.errors, after.buckets[math.inf]) == (100, 10, 100)
    w = window(Sample(), after)
    assert (w.requests, w.success_rate, w.p99_ms) == (100, 0.9, 1000)
    before = Sample(responses=50, errors=10, buckets={5.0: 50, 500.0: 50, 1000.0: 50, math.inf: 50})
    w = window(before, after)  # the last 50 requests: no errors, 48 under 500 ms, 2 under 1 s
    assert (w.requests, w.success_rate, w.p99_ms) == (50, 1.0, 1000)
    assert window(after, after).success_rate is None


def test_verdicts() -> None:
    t = Thresholds(min_success_rate=0.99, max_p99_ms=500, min_requests=10)
    from controlplane.canary.metrics import Window
    assert judge(Window(5, 1.0, 1), t).verdict is Verdict.INCONCLUSIVE
    assert judge(Window(100, 0.98, 1), t).verdict is Verdict.FAIL
    assert judge(Window(100, 1.0, 1000), t).verdict is Verdict.FAIL
    assert judge(Window(100, 0.995, 250), t).verdict is Verdict.PASS


def _policy(**spec: object) -> Policy:
    policy = Policy()
    for raw in [*demo_policy(1, 2), {"kind": "Canary", "name": "c", "spec": {**SPEC, "steps": [50], **spec}}]:
        policy = with_document(policy, parse_document(raw))
    assert policy.problems() == []
    return policy


def test_weights_and_ab_route_are_written_into_the_route() -> None:
    policy = _policy(match=[{"name": "x-beta", "exact": "1"}])
    canary = policy.canaries["c"]
    shifted = apply_weight(policy, canary, 30, ab=True)
    assert weight_in_policy(shifted, canary) == 30
    names = [r.name for r in shifted.services["classifier"].routes]
    assert names == ["infer-ab", "infer"]  # the A/B route comes first, so it wins
    assert shifted.problems() == []
    assert [r.name for r in apply_weight(shifted, canary, 0, ab=False).services["classifier"].routes] == ["infer"]


def test_operator_actions_validate_state() -> None:
    policy = _policy()
    paused = operate(policy, "c", "pause", 1.0)
    assert paused.canary_status["c"].state == "paused"
    with pytest.raises(ValueError, match="already paused"):
        operate(paused, "c", "pause", 2.0)
    aborted = operate(paused, "c", "abort", 3.0)
    assert aborted.canary_status["c"].state == "rolled_back" and weight_in_policy(aborted, aborted.canaries["c"]) == 0
    with pytest.raises(ValueError, match="already rolled back"):
        operate(aborted, "c", "resume", 4.0)


def test_canary_references_are_checked() -> None:
    policy = _policy()
    bad = with_document(policy, parse_document({"kind": "Canary", "name": "d", "spec": {
        **SPEC, "steps": [10], "canary": "classifier-v9"}}))
    # d names an unknown backend, and c and d both claim the same route.
    assert {p.loc for p in bad.problems()} == {"canaries.c.route", "canaries.d.canary", "canaries.d.route"}


def test_sticky_canary_hashes_the_split_while_it_runs() -> None:
    from controlplane import resources as types
    from controlplane.translate import ProxyGroup, translate

    policy = _policy(sticky={"type": "header", "name": "x-user"})
    canary = policy.canaries["c"]
    running = apply_weight(policy, canary, 30, ab=True)
    route = running.services["classifier"].routes[0]
    assert route.sticky_split and [h.name for h in route.hash_on] == ["x-user"]
    envoy_route = translate(running, ProxyGroup("edge", "127.0.0.1", 1))[types.ROUTE]["edge"].virtual_hosts[0].routes[0]
    assert envoy_route.route.weighted_clusters.use_hash_policy.value is True
    assert envoy_route.route.hash_policy[0].header.header_name == "x-user"
    done = apply_weight(running, canary, 100, ab=False).services["classifier"].routes[0]
    assert not done.sticky_split and done.hash_on == []


def test_relative_gates_judge_the_canary_against_stable_in_the_same_window() -> None:
    from controlplane.canary.metrics import Window

    gates = Thresholds(min_requests=10, max_p99_ms=None, max_success_rate_drop=0.01, max_p99_ratio=1.2)
    stable = Window(200, 1.0, 5.0)
    assert judge(Window(100, 1.0, 5.0), gates, stable).verdict is Verdict.PASS
    slow = judge(Window(100, 1.0, 50.0), gates, stable)
    assert (slow.verdict, slow.gate) == (Verdict.FAIL, "thresholds.max_p99_ratio") and "10.00x" in slow.reason
    assert judge(Window(100, 1.0, 10.0), gates, stable).verdict is Verdict.PASS  # within p99_tolerance_ms
    worse = judge(Window(100, 0.995, 5.0), gates.model_copy(update={"min_success_rate": 0.9}), Window(200, 1.0, 5))
    assert worse.verdict is Verdict.PASS  # 0.5 points below: within the allowed drop
    failing = judge(Window(100, 0.95, 5.0), gates.model_copy(update={"min_success_rate": 0.9}), stable)
    assert failing.gate == "thresholds.max_success_rate_drop"
    assert judge(Window(100, 1.0, 50.0), gates, Window(3, 1.0, 1.0)).verdict is Verdict.PASS  # stable idle: skipped


def test_shadow_and_generation_verdicts() -> None:
    from controlplane.canary.analysis import combined, judge_generation, judge_shadow
    from controlplane.canary.generation import GenWindow, between, parse
    from controlplane.policy.canary import Shadow
    from controlplane.shadow.compare import Comparison
    from controlplane.shadow.server import Tally

    shadow = Shadow(min_comparisons=10, min_agreement=0.995, max_abs_diff=0.1)
    few = judge_shadow(Tally(compared=3), shadow)
    assert (few.verdict, few.gate) == (Verdict.INCONCLUSIVE, "shadow.min_comparisons")
    flipped = Tally(compared=100, comparison=Comparison(rows=400, argmax_rows=400, agreed_rows=388))
    assert judge_shadow(flipped, shadow).gate == "shadow.min_agreement"
    same = Tally(compared=100, comparison=Comparison(rows=400, argmax_rows=400, agreed_rows=400, max_abs_diff=0.2))
    assert judge_shadow(same, shadow).gate == "shadow.max_abs_diff"
    broken = Tally(compared=90, candidate_errors=10)
    assert judge_shadow(broken, shadow).gate == "shadow.max_error_rate"

    text = ('vllm:time_to_first_token_seconds_sum{model_name="m"} 0.5\n'
            'vllm:time_to_first_token_seconds_count{model_name="m"} 10\n'
            'vllm:inter_token_latency_seconds_sum{model_name="m"} 1.0\n'
            'vllm:inter_token_latency_seconds_count{model_name="m"} 100\n')
    window = between({}, {"a:1": parse(text)})
    assert window == GenWindow(10, 50.0, 10.0)
    gates = Thresholds(max_ttft_ratio=1.3, min_generations=5)
    slow = judge_generation(GenWindow(10, 20.0, 10.0), window, gates)
    assert (slow.verdict, slow.gate) == (Verdict.FAIL, "thresholds.max_ttft_ratio")
    assert judge_generation(GenWindow(2, 20.0, 10.0), window, gates).verdict is Verdict.INCONCLUSIVE
    assert combined([judge_generation(window, window, gates), slow]).gate == "thresholds.max_ttft_ratio"

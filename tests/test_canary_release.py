"""A finished canary releases its route: the next object may take the route, the operator's split
stands, and while a canary still drives the route the refusal says what to do about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from policies import demo_policy

from controlplane.canary.controller import CanaryController
from controlplane.canary.transitions import apply_weight, weight_in_policy, with_status
from controlplane.policy import Canary, CanaryStatus, Policy, parse_document, with_document
from controlplane.policy.canary import State, spec_key
from controlplane.store import open_store

SPEC = {"service": "classifier", "route": "infer", "stable": "classifier-v1", "canary": "classifier-v2",
        "step_weight": 20}
CANARY = {"kind": "Canary", "name": "classifier-v2", "spec": SPEC}
HEALTH = {"path": "/v2/health/ready", "interval_s": 1}
GEO = [
    {"kind": "Geo", "name": "geo", "spec": {"default_region": "us",
                                            "prefixes": [{"cidr": "198.51.100.0/24", "region": "eu"}]}},
    {"kind": "GeoRoute", "name": "by-region", "spec": {"service": "classifier", "route": "infer", "regions": {
        "eu": {"backend": "classifier-v2", "fallback": ["us"]}, "us": {"backend": "classifier-v1"}}}},
]


def build(*documents: dict[str, Any]) -> Policy:
    policy = Policy()
    for raw in [*demo_policy(8001, 8002), *documents]:
        if raw["kind"] == "Backend":
            raw = {**raw, "spec": {**raw["spec"], "health_check": HEALTH}}
        policy = with_document(policy, parse_document(raw))
    return policy


def in_state(policy: Policy, state: State, weight: int) -> Policy:
    canary = policy.canaries["classifier-v2"]
    status = CanaryStatus(spec=spec_key(canary), state=state, weight=weight, step=0)
    return with_status(apply_weight(policy, canary, weight, ab=False), "classifier-v2", status)


def test_a_running_canary_blocks_a_georoute_and_says_how_to_release_the_route() -> None:
    problems = in_state(build(CANARY, *GEO), "progressing", 20).problems()
    assert [p.loc for p in problems] == ["georoutes.by-region.route"]
    assert "canary 'classifier-v2' drives this route's split" in problems[0].msg
    assert "it is progressing" in problems[0].msg
    assert "sluice canary abort classifier-v2" in problems[0].msg
    assert "sluice delete canary classifier-v2" in problems[0].msg


def test_a_finished_canary_releases_its_route() -> None:
    for state, weight in (("succeeded", 100), ("rolled_back", 0)):
        assert in_state(build(CANARY, *GEO), state, weight).problems() == []  # type: ignore[arg-type]
        second = {"kind": "Canary", "name": "classifier-v3", "spec": SPEC}
        assert in_state(build(CANARY, second), state, weight).problems() == []  # type: ignore[arg-type]


def test_a_finished_canary_whose_spec_changed_drives_again() -> None:
    policy = in_state(build(CANARY), "succeeded", 100)
    changed = with_document(policy, parse_document({**CANARY, "spec": {**SPEC, "step_weight": 50}}))
    with_geo = changed
    for raw in GEO:
        with_geo = with_document(with_geo, parse_document(raw))
    assert [p.loc for p in with_geo.problems()] == ["georoutes.by-region.route"]


async def _after_tick(tmp_path: Path, policy: Policy) -> Policy:
    store = await open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        await store.commit(policy, expected=None, actor="test", message="set up")
        async with aiohttp.ClientSession() as session:
            await CanaryController(store, lambda: []).tick(session)
        return (await store.current()).policy
    finally:
        await store.close()


async def test_the_controller_leaves_a_released_route_to_the_operator(tmp_path: Path) -> None:
    done = in_state(build(CANARY), "succeeded", 100)
    canary: Canary = done.canaries["classifier-v2"]
    reapplied = apply_weight(done, canary, 0, ab=False)  # the operator sends everything back to v1
    after = await _after_tick(tmp_path, reapplied)
    assert weight_in_policy(after, canary) == 0
    assert after.canary_status["classifier-v2"].state == "succeeded"


async def test_the_controller_still_holds_a_paused_canary(tmp_path: Path) -> None:
    paused = in_state(build(CANARY), "paused", 40)
    canary: Canary = paused.canaries["classifier-v2"]
    after = await _after_tick(tmp_path, apply_weight(paused, canary, 0, ab=False))
    assert weight_in_policy(after, canary) == 40


def test_a_released_route_may_split_to_other_backends() -> None:
    v3 = {"kind": "Backend", "name": "classifier-v3", "spec": {"endpoints": [{"address": "127.0.0.1", "port": 8003}]}}
    policy = in_state(build(CANARY, v3), "succeeded", 100)
    route = policy.services["classifier"].routes[0]
    split = [*route.split, route.split[0].model_copy(update={"backend": "classifier-v3", "weight": 10})]
    service = policy.services["classifier"].model_copy(update={"routes": [route.model_copy(update={"split": split})]})
    moved = policy.model_copy(update={"services": {"classifier": service}})
    assert moved.problems() == []
    running = in_state(moved, "progressing", 20)  # apply_weight rewrites the split to v1/v2 only
    assert running.problems() == []
    assert [p.loc for p in in_state(moved, "paused", 20).model_copy(
        update={"services": {"classifier": service}}).problems()] == ["canaries.classifier-v2.route"]

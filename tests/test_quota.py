"""Splitting a global limit between proxies by demand."""

from __future__ import annotations

import pytest
from policies import demo_policy

from controlplane.policy import Policy, parse_document, with_document
from controlplane.quota import moved, split
from controlplane.translate.filters import ratelimit_config


def test_split_follows_demand_with_a_floor() -> None:
    shares = split({"a": 30.0, "b": 10.0}, floor=0.1)
    assert shares == pytest.approx({"a": 0.05 + 0.9 * 0.75, "b": 0.05 + 0.9 * 0.25})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert split({"a": 0.0, "b": 0.0}) == pytest.approx({"a": 0.5, "b": 0.5})  # no demand yet: equal
    assert split({"a": 5.0}) == {"a": 1.0}
    assert split({}) == {}


def test_moved_ignores_noise() -> None:
    assert not moved({"a": 0.5, "b": 0.5}, {"a": 0.51, "b": 0.49})
    assert moved({"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3})
    assert moved({"a": 1.0}, {"a": 0.5, "b": 0.5})


def test_config_carries_this_proxys_share() -> None:
    policy = Policy()
    limit = {"kind": "RateLimit", "name": "shared", "spec": {
        "service": "classifier", "rate": 100, "burst": 40, "key": [], "scope": "global"}}
    local = {"kind": "RateLimit", "name": "mine", "spec": {"service": "classifier", "rate": 5, "burst": 5}}
    for raw in [*demo_policy(1, 2), limit, local]:
        policy = with_document(policy, parse_document(raw))
    config = ratelimit_config(policy, {"shared": 0.25, "mine": 0.5})
    by_name = {p["name"]: p for p in config["policies"]}  # type: ignore[index]
    assert (by_name["shared"]["rate"], by_name["shared"]["burst"]) == (25.0, 10)
    assert (by_name["mine"]["rate"], by_name["mine"]["burst"]) == (5, 5)  # local limits are not shared
    tiny = ratelimit_config(policy, {"shared": 0.001})
    assert [p["burst"] for p in tiny["policies"] if p["name"] == "shared"] == [1]  # type: ignore[index]

"""A global limit split among many proxies gives each a configuration the real filter accepts,
however small its share: hypothesis draws valid limits and shares, the control plane renders
the filter's configuration, and the compiled ratelimit.wasm (in the wasmtime host) must take it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policies import demo_policy
from proxywasm_host import ProxyWasmHost

from controlplane.policy import Policy, parse_document, with_document
from controlplane.policy.filter_limits import BURST_MAX, RATE_MAX, RATE_MIN
from controlplane.translate.filters import ratelimit_config

FILTER = "ratelimit"  # the `wasm` fixture (conftest.py)


@pytest.fixture(scope="module")
def host(wasm: Path) -> Iterator[ProxyWasmHost]:
    """One VM, reconfigured per draw, as Envoy delivers each new configuration."""
    started = ProxyWasmHost(wasm)
    assert started.start()
    yield started


@st.composite
def global_limit(draw: st.DrawFn) -> tuple[float, int]:
    rate = draw(st.floats(RATE_MIN, RATE_MAX))
    burst = draw(st.integers(1, min(BURST_MAX, int(rate * 1e9))))
    return rate, burst


@settings(max_examples=300, deadline=None)
@given(limit=global_limit(), proxies=st.integers(1, 100_000), demand=st.floats(0, 1))
def test_any_share_of_a_valid_global_limit_is_a_valid_filter_config(
        host: ProxyWasmHost, limit: tuple[float, int], proxies: int, demand: float) -> None:
    rate, burst = limit
    policy = Policy()
    for raw in [*demo_policy(1, 2), {"kind": "RateLimit", "name": "g", "spec": {
            "service": "classifier", "rate": rate, "burst": burst, "scope": "global"}}]:
        policy = with_document(policy, parse_document(raw))
    assert policy.problems() == []
    # The smallest share the balancer gives: the floor split over every proxy, times no demand.
    share = demand * 0.1 / proxies
    assert host.configure(json.dumps(ratelimit_config(policy, {"g": share}))), host.logs

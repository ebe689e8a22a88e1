"""Per-proxy status and the convergence histogram, against a real Envoy."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from harness import Backend, ControlPlane, Envoy, http
from policies import demo_policy


def histogram(cp: ControlPlane) -> dict[str, float]:
    """sluice_convergence_seconds: count and sum."""
    text = http("GET", f"{cp.url}/metrics")[2].decode()
    return {k: float(v) for k, v in re.findall(r"^sluice_convergence_seconds_(count|sum) (\S+)$", text, re.M)}


def test_convergence_histogram_observes_each_write(controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
                                                   backends: dict[int, Backend]) -> None:
    status, _ = controlplane.apply(*demo_policy(backends[1].port, backends[2].port))
    assert status == 200
    envoy = start_envoy(controlplane, protocol="sotw")  # its version_info is the type's (delta: the resource's)
    controlplane.wait_converged(envoy.node_id)
    before = histogram(controlplane)
    assert before["count"] == 0  # written before any proxy connected: no convergence to time

    took: list[float] = []
    for w1, w2 in ((0, 100), (100, 0), (30, 70)):
        started = time.time()
        status, body = controlplane.apply(*demo_policy(backends[1].port, backends[2].port, w1, w2))
        assert status == 200
        controlplane.wait_converged(envoy.node_id, body["revision"], timeout=5)
        took.append(time.time() - started)
    after = histogram(controlplane)
    assert after["count"] - before["count"] == 3
    # Each observation is real time (an isolated write is pushed at once, without the publisher's
    # quiet period): more than nothing, at most what the test saw from before its write until
    # after the proxy reported the ACK.
    assert 0 < after["sum"] - before["sum"] <= sum(took)

    (proxy,) = controlplane.proxies()
    dump = envoy.config_dump("dynamic_route_configs")["configs"][0]
    assert proxy["types"]["rds"]["acked_version"] == dump["version_info"]  # what Envoy itself says it runs
    assert proxy["types"]["rds"]["in_flight_version"] is None

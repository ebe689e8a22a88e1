"""Several control-plane replicas on one real Redis, with real Envoys and backends: a change made
through one replica reaches an Envoy connected to another within a second; the quota balancer
runs on one replica, covers every replica's proxies and moves when its replica dies; and with
Redis down for 10 s, traffic through Envoy never fails while writes fail fast and come back."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Backend, ControlPlane, Envoy, get_json, http, wait_until
from load import Load
from policies import demo_policy
from redis_server import RedisServer

LEASE_TTL_S = 2.0
QUOTA_INTERVAL_S = 0.5


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[[str], ControlPlane]]:
    started: list[ControlPlane] = []

    def start(name: str) -> ControlPlane:
        cp = ControlPlane.start(tmp_path, store=redis_server.url, name=name, args=("--replica-id", name),
                                env={"SLUICE_LEASE_TTL_S": str(LEASE_TTL_S),
                                     "SLUICE_QUOTA_INTERVAL_S": str(QUOTA_INTERVAL_S)})
        started.append(cp)
        return cp

    yield start
    for cp in started:
        cp.proc.stop()


def model_version(envoy: Envoy) -> str:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    return http("POST", f"{envoy.url}/v2/models/classifier/infer", body)[1].get("x-model-version", "error")


def test_a_change_through_one_replica_reaches_envoys_of_another(
        replicas: Callable[[str], ControlPlane], start_envoy: Callable[..., Envoy],
        backends: dict[int, Backend]) -> None:
    a, b = replicas("replica-a"), replicas("replica-b")
    assert a.apply(*demo_policy(backends[1].port, backends[2].port))[0] == 200
    wait_until(lambda: b.revision() == 1, 2, what="replica b to load revision 1")
    envoy = start_envoy(b)
    b.wait_converged(envoy.node_id)
    assert model_version(envoy) == "1"

    status, body = a.apply(*demo_policy(backends[1].port, backends[2].port, 0, 100))
    assert status == 200, body
    wait_until(lambda: model_version(envoy) == "2", 30, interval=0.01, what="version 2 through replica b")
    b.wait_converged(envoy.node_id, revision=2)
    # Both replicas tell the same history, whoever wrote it.
    assert get_json(f"{a.url}/api/v1/revisions") == get_json(f"{b.url}/api/v1/revisions")


def ratelimit_rates(envoy: Envoy) -> dict[str, float]:
    """The rate each ratelimit policy has in this Envoy's filter config (its share of a global one)."""
    dump = envoy.config_dump("ecds_filters")
    rates: dict[str, float] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("@type", "").endswith("google.protobuf.StringValue"):
                for policy in json.loads(node["value"]).get("policies", []):
                    rates[policy["name"]] = float(policy["rate"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dump)
    return rates


def leaders(*cps: ControlPlane) -> list[str]:
    return [get_json(f"{cp.url}/api/v1/replica")["id"] for cp in cps
            if cp.proc.alive() and get_json(f"{cp.url}/api/v1/replica")["leases"].get("quota-balancer")]


def test_one_quota_balancer_covers_every_replica_and_moves_when_its_replica_dies(
        replicas: Callable[[str], ControlPlane], start_envoy: Callable[..., Envoy],
        backends: dict[int, Backend]) -> None:
    a = replicas("replica-a")
    wait_until(lambda: leaders(a) == ["replica-a"], 5, what="replica a to lead")
    b = replicas("replica-b")
    shared = {"kind": "RateLimit", "name": "shared", "spec": {
        "service": "classifier", "rate": 10, "burst": 10, "key": [], "scope": "global"}}
    assert a.apply(*demo_policy(backends[1].port, backends[2].port), shared)[0] == 200
    envoy_a, envoy_b = start_envoy(a, node_id="edge-a"), start_envoy(b, node_id="edge-b")
    # The leader (a) measures both Envoys, though edge-b is connected to b: half the rate each.
    for envoy in (envoy_a, envoy_b):
        wait_until(lambda e=envoy: ratelimit_rates(e) == {"shared": 5.0}, 10,
                   what=f"{envoy.node_id} to get half the global rate")
    assert leaders(a, b) == ["replica-a"]  # one balancer, and b did not start a second one

    a.proc.kill()
    killed = time.monotonic()
    wait_until(lambda: leaders(b) == ["replica-b"], 30, interval=0.1, what="replica b to take over")
    print(f"replica b took over {time.monotonic() - killed:.1f} s after a was killed (lease TTL {LEASE_TTL_S} s)")
    # a's directory entry expires with it; the new leader gives edge-b the whole rate.
    wait_until(lambda: ratelimit_rates(envoy_b) == {"shared": 10.0}, 10, what="edge-b to get the whole rate")
    assert leaders(b) == ["replica-b"]


def test_the_canary_controller_reads_the_envoys_of_every_replica(
        replicas: Callable[[str], ControlPlane], start_envoy: Callable[..., Envoy],
        backends: dict[int, Backend]) -> None:
    """The canary runs on replica a, but all traffic goes through the Envoy connected to replica b:
    a reads b's Envoy through the proxy directory, so the canary sees the requests and succeeds
    (reading only its own Envoy it would see none, and never promote)."""
    a = replicas("replica-a")
    wait_until(lambda: get_json(f"{a.url}/api/v1/replica")["leases"].get("canary-controller"), 10,
               what="replica a to hold the canary lease")
    b = replicas("replica-b")
    assert a.apply(*demo_policy(backends[1].port, backends[2].port))[0] == 200
    envoy_a, envoy_b = start_envoy(a, node_id="edge-a"), start_envoy(b, node_id="edge-b")
    a.wait_converged(envoy_a.node_id)
    b.wait_converged(envoy_b.node_id)
    canary = {"kind": "Canary", "name": "v2", "spec": {
        "service": "classifier", "route": "infer", "stable": "classifier-v1", "canary": "classifier-v2",
        "steps": [50], "interval_s": 1.0, "thresholds": {"min_success_rate": 0.9, "min_requests": 5}}}
    with Load(envoy_b.listen_port):
        assert b.apply(canary)[0] == 200
        final = wait_until(lambda: (s := get_json(f"{b.url}/api/v1/canaries/v2/status")["status"])["state"]
                           in ("succeeded", "rolled_back") and s, 60, interval=0.2, what="the canary to finish")
    assert final["state"] == "succeeded", final["events"]
    assert get_json(f"{b.url}/api/v1/replica")["leases"].get("canary-controller") is False  # a decided it


def test_redis_down_for_ten_seconds_under_traffic(
        redis_server: RedisServer, replicas: Callable[[str], ControlPlane], start_envoy: Callable[..., Envoy],
        backends: dict[int, Backend]) -> None:
    cp = replicas("replica-a")
    assert cp.apply(*demo_policy(backends[1].port, backends[2].port))[0] == 200
    envoy = start_envoy(cp, node_id="edge-1")
    cp.wait_converged(envoy.node_id)

    codes: Counter[int] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            codes[http("GET", f"{envoy.url}/v2/models/classifier", timeout=5)[0]] += 1
            time.sleep(0.02)

    driver = threading.Thread(target=traffic)
    driver.start()
    try:
        time.sleep(0.5)
        redis_server.proc.kill()
        down = time.monotonic()
        # Writes fail fast and say why; reads come from the last loaded revision.
        status, body = cp.apply(*demo_policy(backends[1].port, backends[2].port, 0, 100))
        assert status == 503
        assert body["error"].startswith("policy store unavailable: cannot reach Redis at redis://127.0.0.1:")
        assert "revision 1 keeps serving" in body["error"]
        assert len(get_json(f"{cp.url}/api/v1/policy")["documents"]) == 3
        assert http("GET", f"{cp.url}/api/v1/revisions")[0] == 503
        # xDS keeps serving: an Envoy that connects now gets the whole configuration.
        late = start_envoy(cp, node_id="edge-late")
        cp.wait_converged(late.node_id, revision=1)
        time.sleep(max(0.0, 10.0 - (time.monotonic() - down)))
        redis_server.restart()
        # The replica reconnects on its own: the next write goes through and reaches Envoy.
        wait_until(lambda: cp.apply(*demo_policy(backends[1].port, backends[2].port, 0, 100))[0] == 200, 10,
                   interval=0.2, what="a write after Redis came back")
        wait_until(lambda: model_version(envoy) == "2", 2, what="the change after the outage")
        time.sleep(0.5)
    finally:
        stop.set()
        driver.join()
    assert codes[200] > 200 and set(codes) == {200}, codes
    assert "writes fail until it is back" in cp.proc.log.read_text()

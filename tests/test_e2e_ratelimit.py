"""Rate limits from the admin API, through ECDS, enforced by the WASM filter in a real Envoy."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from typing import Any

import pytest
from harness import ROOT, Backend, ControlPlane, Envoy, http, wait_until
from policies import demo_policy

WASM = ROOT / "build/filters/bin/ratelimit.wasm"
BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


def limit(rate: float, burst: int, **spec: Any) -> dict[str, Any]:
    return {"kind": "RateLimit", "name": "per-client",
            "spec": {"service": "classifier", "routes": ["infer"], "rate": rate, "burst": burst, **spec}}


EDGE = {"kind": "Edge", "name": "edge", "spec": {"xff_trusted_hops": 1}}


def send(envoy: Envoy, client: str, extra_xff: str = "") -> tuple[int, dict[str, str]]:
    xff = f"{extra_xff}, {client}" if extra_xff else client
    status, headers, _ = http("POST", f"{envoy.url}/v2/models/classifier/infer", BODY.encode(),
                              {"X-Forwarded-For": xff})
    return status, headers


def burst(envoy: Envoy, client: str, n: int, parallel: int = 1) -> Counter[int]:
    if parallel == 1:
        return Counter(send(envoy, client)[0] for _ in range(n))
    with ThreadPoolExecutor(parallel) as pool:  # one connection per request, spread over workers
        return Counter(pool.map(lambda _: send(envoy, client)[0], range(n)))


@pytest.fixture
def limited(controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
            backends: dict[int, Backend]) -> Callable[..., Envoy]:
    assert WASM.exists(), f"{WASM} is missing: run `make filters`"

    def start(*documents: dict[str, Any]) -> Envoy:
        status, body = controlplane.apply(*demo_policy(backends[1].port, backends[2].port), EDGE, *documents)
        assert status == 200, body
        envoy = start_envoy(controlplane, concurrency=2)
        controlplane.wait_converged(envoy.node_id)
        return envoy

    return start


def test_burst_admits_exactly_burst_across_workers(limited: Callable[..., Envoy]) -> None:
    envoy = limited(limit(0.01, 5))
    assert burst(envoy, "192.0.2.10", 25, parallel=16) == Counter({200: 5, 429: 20})


def test_refill_and_independent_clients(limited: Callable[..., Envoy]) -> None:
    envoy = limited(limit(2, 3))
    assert burst(envoy, "192.0.2.10", 6) == Counter({200: 3, 429: 3})
    assert burst(envoy, "192.0.2.11", 4) == Counter({200: 3, 429: 1})  # its own bucket
    time.sleep(2.0)
    admitted = burst(envoy, "192.0.2.10", 10)[200]
    assert 3 <= admitted <= 4  # burst full again after 1.5 s at 2/s, capped at 3 (+1 for timing)


def test_429_carries_ratelimit_fields(limited: Callable[..., Envoy]) -> None:
    envoy = limited(limit(0.5, 2))
    status, headers = send(envoy, "192.0.2.20")
    assert status == 200 and headers["ratelimit"].startswith('"per-client";r=1')
    send(envoy, "192.0.2.20")
    status, headers, raw = http("POST", f"{envoy.url}/v2/models/classifier/infer", BODY.encode(),
                                {"X-Forwarded-For": "192.0.2.20"})
    assert status == 429
    assert json.loads(raw)["policy"] == "per-client"
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit-policy"] == '"per-client";q=2;w=4'
    assert headers["ratelimit"].startswith('"per-client";r=0;t=')


def test_left_xff_entries_cannot_evade(limited: Callable[..., Envoy]) -> None:
    envoy = limited(limit(0.01, 2))
    codes = Counter(send(envoy, "192.0.2.30", extra_xff=f"10.0.0.{i}")[0] for i in range(6))
    assert codes == Counter({200: 2, 429: 4})


def test_limit_change_applies_without_dropping_connections(controlplane: ControlPlane,
                                                           limited: Callable[..., Envoy]) -> None:
    envoy = limited(limit(0.01, 2))
    conn = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=5)

    def on_conn(client: str) -> int:
        # GET: a local reply to a request whose body Envoy has not read closes the connection,
        # which would hide the drain this test is about.
        conn.request("GET", "/v2/models/classifier", headers={"X-Forwarded-For": client})
        response = conn.getresponse()
        response.read()
        return response.status

    assert [on_conn("192.0.2.40") for _ in range(3)] == [200, 200, 429]
    sock = conn.sock
    listener_version = envoy.config_dump("dynamic_listeners")["configs"][0]["active_state"]["version_info"]
    status, _ = controlplane.apply(limit(0.01, 10))
    assert status == 200
    wait_until(lambda: on_conn("192.0.2.41") == 200 and on_conn("192.0.2.41") == 200 and on_conn("192.0.2.41") == 200,
               timeout=30, interval=0.01, what="the new limit")
    assert conn.sock is sock  # the same keep-alive connection: no listener drain
    (listener,) = envoy.config_dump("dynamic_listeners")["configs"]
    assert "draining_state" not in listener
    assert listener["active_state"]["version_info"] == listener_version  # only the filter config changed


def counters(envoy: Envoy, policy: str) -> dict[str, float]:
    """The filter's counters for one policy, from Envoy's /stats/prometheus (policy as a label)."""
    out = {}
    for line in envoy.stats().splitlines():
        if line.startswith("sluice_ratelimit_") and f'{{policy="{policy}"}}' in line:
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("sluice_ratelimit_").split("{")[0]] = float(value)
    return out


def test_shadow_mode_counts_but_admits(limited: Callable[..., Envoy]) -> None:
    envoy = limited(limit(0.01, 1, shadow=True))
    assert burst(envoy, "192.0.2.50", 4) == Counter({200: 4})
    # allowed counts requests within the limit; the 3 over it pass but count as shadow_limited.
    assert counters(envoy, "per-client") == {"requests": 4, "allowed": 1, "limited": 0, "shadow_limited": 3}


def test_metrics_per_policy(limited: Callable[..., Envoy]) -> None:
    envoy = limited(limit(0.01, 2))
    burst(envoy, "192.0.2.70", 5)
    assert counters(envoy, "per-client") == {"requests": 5, "allowed": 2, "limited": 3, "shadow_limited": 0}


def test_a_key_the_filter_cannot_hold_is_refused_by_the_api_and_old_limits_stay(
        controlplane: ControlPlane, limited: Callable[..., Envoy]) -> None:
    envoy = limited(limit(0.01, 2))
    assert burst(envoy, "192.0.2.60", 3) == Counter({200: 2, 429: 1})
    # A valid HTTP header name, longer than the filter's key table holds (64 bytes): the API
    # refuses it (it once passed, and the filter NACKed it in proxy_on_configure).
    long_header = "x-" + "k" * 98
    revision = controlplane.revision()
    status, body = controlplane.apply(limit(0.01, 50, key=[{"type": "header", "name": long_header}]))
    assert status == 422 and body["problems"][0]["loc"].startswith("documents.0.spec.key.0.name"), body
    assert controlplane.revision() == revision
    proxy = next(p for p in controlplane.proxies() if p["node_id"] == envoy.node_id)
    assert not any(t["last_nack"] for t in proxy["types"].values())
    assert burst(envoy, "192.0.2.60", 2) == Counter({429: 2})  # still the old bucket of 2


def test_example_file_limits_each_client_behind_one_balancer(controlplane: ControlPlane,
                                                             limited: Callable[..., Envoy]) -> None:
    import subprocess

    from harness import PYTHON

    envoy = limited()
    result = subprocess.run([PYTHON, "-m", "sluice", "apply", "-f", str(ROOT / "examples/ratelimit.yaml"),
                             "--server", controlplane.url], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 0, result.stderr
    controlplane.wait_converged(envoy.node_id)
    # As the load balancer would send it: X-Forwarded-For: <client>. Burst 5, then 1/s.
    started = time.monotonic()
    codes = [send(envoy, "192.0.2.10")[0] for _ in range(5)]
    codes += [send(envoy, "192.0.2.10", extra_xff="198.51.100.99")[0] for _ in range(3)]
    refilled = int(time.monotonic() - started)  # at 1 token/s, a slow machine may earn one back
    assert codes[:5] == [200] * 5
    assert codes[5:].count(200) <= refilled  # entries a client adds on the left change nothing
    assert send(envoy, "192.0.2.11")[0] == 200  # another client has its own bucket

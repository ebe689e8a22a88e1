"""Routes split per service (scoped routes: the request's host picks one service's route
configuration), in a real Envoy in front of real backends, over state of the world and delta.

A write to one service sends that service's route configuration and no other type; a route
configuration Envoy refuses leaves the other services' routes updating."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from harness import Backend, ControlPlane, Envoy, http, wait_until
from test_e2e_traffic import BODY, INFER, Start, backend, route


def service(name: str, split: str, *extra: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Service", "name": name,
            "spec": {"hosts": [f"{name}.example"], "routes": [*extra, route(split)]}}


def served_by(envoy: Envoy, host: str, n: int = 3, headers: dict[str, str] | None = None) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        status, response_headers, _ = http("POST", envoy.url + INFER, BODY, {"Host": host, **(headers or {})})
        out[response_headers.get("x-model-version", "?") if status == 200 else str(status)] += 1
    return out


def pushes(cp: ControlPlane) -> dict[str, float]:
    text = http("GET", f"{cp.url}/metrics")[2].decode()
    return {t: float(v) for t, v in re.findall(r'^sluice_xds_pushes_total\{type="(\w+)"\} (\S+)$', text, re.M)}


def proxy(cp: ControlPlane, envoy: Envoy) -> dict[str, Any]:
    return next(p for p in cp.proxies() if p["node_id"] == envoy.node_id)


@pytest.mark.parametrize("protocol", ["sotw", "delta"])
def test_routes_per_service_and_a_refused_one_leaves_others_updating(
        controlplane: ControlPlane, start_envoy: Start, backends: dict[int, Backend], protocol: str) -> None:
    cp = controlplane
    status, body = cp.apply(
        backend("classifier-v1", backends[1].port), backend("classifier-v2", backends[2].port),
        service("a", "classifier-v1"),
        service("b", "classifier-v2", route("classifier-v1", name="beta",
                                            match={"headers": [{"name": "x-group", "exact": "beta"}]})),
    )
    assert status == 200, body
    envoy = start_envoy(cp, protocol=protocol)
    cp.wait_converged(envoy.node_id, body["revision"])
    scoped = envoy.config_dump("dynamic_scoped_route_configs")
    assert {s["name"] for c in scoped["configs"] for s in c["scoped_route_configs"]} == {
        "a/a.example", "b/b.example"}
    assert served_by(envoy, "a.example") == Counter({"1": 3})
    assert served_by(envoy, "b.example") == Counter({"2": 3})
    assert served_by(envoy, "b.example", headers={"x-group": "beta"}) == Counter({"1": 3})
    assert served_by(envoy, "c.example") == Counter({"404": 3})  # no service: no route, as before

    # Envoy refuses a's new routes (RE2 has no backreferences)...
    refused = service("a", "classifier-v2")
    refused["spec"]["routes"][0]["match"] = {"regex": r"/v2/models/(classifier)/\1"}
    assert cp.apply(refused)[0] == 200
    wait_until(lambda: proxy(cp, envoy)["types"]["rds"]["last_nack"], timeout=10, what="the NACK of a's routes")
    assert served_by(envoy, "a.example") == Counter({"1": 3})  # its old routes serve

    # ...and b's still update, with nothing but b's route configuration sent.
    before = pushes(cp)
    status, body = cp.apply(service("b", "classifier-v1"))
    assert status == 200, body
    wait_until(lambda: served_by(envoy, "b.example") == Counter({"1": 3}), timeout=10, what="b's new routes")
    after = pushes(cp)
    assert {t: after[t] - before.get(t, 0) for t in after if after[t] != before.get(t, 0)} == {"rds": 1}
    rds = envoy.config_dump("dynamic_route_configs")["configs"]
    assert sorted(r["route_config"]["name"] for r in rds) == ["edge/a", "edge/b"], rds

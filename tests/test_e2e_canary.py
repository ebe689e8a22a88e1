"""Canary releases against real Envoy and backends: promotion, rollback, restart, no traffic."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from canaries import canary_status, edge_on, wait_canary, webhook_receiver
from harness import PYTHON, ROOT, Backend, ControlPlane, Envoy, get_json, http, wait_until
from load import BODY, Load
from policies import demo_policy


def canary(interval_s: float, steps: list[int], **spec: Any) -> dict[str, Any]:
    return {"kind": "Canary", "name": "v2", "spec": {
        "service": "classifier", "route": "infer", "stable": "classifier-v1", "canary": "classifier-v2",
        "steps": steps, "interval_s": interval_s,
        "thresholds": {"min_success_rate": 0.99, "max_p99_ms": 500, "min_requests": 10}, **spec}}


def status(cp: ControlPlane) -> dict[str, Any]:
    return canary_status(cp, "v2")


def wait_state(cp: ControlPlane, states: set[str], timeout: float) -> dict[str, Any]:
    return wait_canary(cp, "v2", states, timeout)


@pytest.fixture
def edge(controlplane: ControlPlane, start_envoy: Callable[..., Envoy]) -> Callable[[int, int], Envoy]:
    return lambda v1_port, v2_port: edge_on(controlplane, start_envoy, demo_policy(v1_port, v2_port))


@pytest.fixture
def faulty_v2(tmp_path: Path, model_repository: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    backend = Backend.start(tmp_path, model_repository, "classifier:2", *request.param)
    yield backend
    backend.proc.stop()


def test_healthy_canary_is_promoted_step_by_step(controlplane: ControlPlane, edge: Callable[[int, int], Envoy],
                                                 backends: dict[int, Backend]) -> None:
    envoy = edge(backends[1].port, backends[2].port)
    with Load(envoy.listen_port) as load:
        started = time.time()
        assert controlplane.apply(canary(1.5, [20, 50]))[0] == 200
        watch = subprocess.Popen([PYTHON, "-m", "sluice", "canary", "watch", "v2", "--every", "0.3",
                                  "--server", controlplane.url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        final = wait_state(controlplane, {"succeeded", "rolled_back"}, timeout=20)
        took = time.time() - started
        time.sleep(0.5)
        after = load.between(time.time() - 0.4, time.time())
        shown, _ = watch.communicate(timeout=10)
    assert watch.returncode == 0  # watch ends by itself when the canary succeeds
    assert "canary v2: progressing  weight 20%" in shown and "canary v2: succeeded  weight 100%" in shown
    assert "success 100.0%" in shown and "next decision in" in shown
    assert final["state"] == "succeeded" and final["weight"] == 100, final["events"]
    assert [e["weight"] for e in final["events"] if e["state"] == "progressing"] == [20, 50]
    assert 3.0 <= took <= 3.0 + 6.0  # two steps of 1.5 s, plus the time to notice and push
    assert after and {o.version for o in after} == {"2"}  # all traffic on version 2 now
    assert {o.status for o in load.outcomes} == {200}
    split = get_json(f"{controlplane.url}/api/v1/services/classifier")["spec"]["routes"][0]["split"]
    assert {w["backend"]: w["weight"] for w in split} == {"classifier-v1": 0, "classifier-v2": 100}


@pytest.mark.parametrize("faulty_v2", [("--fault-error-rate", "0.2")], indirect=True)
def test_failing_canary_rolls_back_within_two_intervals(controlplane: ControlPlane,
                                                        edge: Callable[[int, int], Envoy],
                                                        backends: dict[int, Backend], faulty_v2: Backend) -> None:
    envoy = edge(backends[1].port, faulty_v2.port)
    interval = 2.0
    with Load(envoy.listen_port) as load:
        started = time.time()
        assert controlplane.apply(canary(interval, [20, 50, 100]))[0] == 200
        final = wait_state(controlplane, {"succeeded", "rolled_back"}, timeout=15)
        rolled_back_at = final["events"][-1]["at"]
        time.sleep(1.0)
    assert final["state"] == "rolled_back" and final["weight"] == 0, final["events"]
    assert "success rate" in final["events"][-1]["message"]
    assert rolled_back_at - started <= 2 * interval + 1.0
    assert max(e["weight"] for e in final["events"]) == 20  # never got past the first step
    errors = [o for o in load.outcomes if o.status != 200]
    assert errors and all(o.version == "2" or o.status == 500 for o in errors)
    assert all(o.at <= rolled_back_at + 0.5 for o in errors)  # none once version 1 had everything back
    during = load.between(started, rolled_back_at)
    # Users saw errors only in the first step's share: ~20% of traffic x 20% failures.
    assert len(errors) / len(during) < 0.12


@pytest.mark.parametrize("faulty_v2", [("--fault-delay-ms", "700")], indirect=True)
def test_slow_canary_rolls_back(controlplane: ControlPlane, edge: Callable[[int, int], Envoy],
                                backends: dict[int, Backend], faulty_v2: Backend) -> None:
    envoy = edge(backends[1].port, faulty_v2.port)
    with Load(envoy.listen_port, threads=8):
        assert controlplane.apply(canary(2.0, [30, 100]))[0] == 200
        final = wait_state(controlplane, {"succeeded", "rolled_back"}, timeout=15)
    assert final["state"] == "rolled_back", [e["message"] for e in final["events"]]
    assert "p99" in final["events"][-1]["message"]


def test_restart_mid_canary_resumes_at_the_same_step(controlplane: ControlPlane, edge: Callable[[int, int], Envoy],
                                                     backends: dict[int, Backend]) -> None:
    envoy = edge(backends[1].port, backends[2].port)
    with Load(envoy.listen_port):
        assert controlplane.apply(canary(3.0, [20, 40, 60]))[0] == 200
        wait_until(lambda: status(controlplane)["status"]["weight"] == 40, 15, interval=0.1, what="step 2")
        controlplane.restart()
        after = status(controlplane)["status"]
        assert (after["state"], after["step"], after["weight"]) == ("progressing", 1, 40)
        final = wait_state(controlplane, {"succeeded", "rolled_back"}, timeout=20)
    assert final["state"] == "succeeded"
    assert [e["weight"] for e in final["events"] if e["state"] == "progressing"] == [20, 40, 60]


def test_canary_without_traffic_pauses_and_never_decides(controlplane: ControlPlane,
                                                         edge: Callable[[int, int], Envoy],
                                                         backends: dict[int, Backend]) -> None:
    edge(backends[1].port, backends[2].port)
    with webhook_receiver() as hooks:
        spec = canary(1.0, [50, 100], inconclusive_limit=3, webhooks={"on_pause": f"{hooks.base}/paused"})
        assert controlplane.apply(spec)[0] == 200
        started = wait_until(lambda: (s := status(controlplane)["status"])["state"] == "progressing" and s, 10,
                             what="the first step")
        paused = wait_state(controlplane, {"paused", "succeeded", "rolled_back"}, timeout=10)
        assert paused["state"] == "paused" and paused["weight"] == 50, paused["events"]
        assert paused["events"][-1]["at"] - started["step_started_at"] >= 3 * 1.0  # three whole windows
        assert paused["events"][-1]["gate"] == "thresholds.min_requests"
        assert "3 inconclusive windows" in paused["events"][-1]["message"]
        time.sleep(1.5)
        assert [(path, call["phase"]) for path, call in hooks.calls] == [("/paused", "paused")]
    body = status(controlplane)
    assert (body["status"]["state"], body["status"]["weight"]) == ("paused", 50)  # held: no verdict for lack of data
    assert body["status"]["events"][-1] == paused["events"][-1]


def test_operator_actions(controlplane: ControlPlane, edge: Callable[[int, int], Envoy],
                          backends: dict[int, Backend]) -> None:
    edge(backends[1].port, backends[2].port)
    assert controlplane.apply(canary(60.0, [10, 100]))[0] == 200
    wait_until(lambda: status(controlplane)["status"]["weight"] == 10, 10, what="first step")
    act = lambda action: http("POST", f"{controlplane.url}/api/v1/canaries/v2/{action}", {})  # noqa: E731
    assert act("pause")[0] == 200 and status(controlplane)["status"]["state"] == "paused"
    assert act("pause")[0] == 409
    assert act("resume")[0] == 200 and status(controlplane)["status"]["state"] == "progressing"
    assert act("promote")[0] == 200
    assert wait_state(controlplane, {"succeeded"}, 10)["weight"] == 100
    assert act("abort")[0] == 409  # already finished
    assert act("explode")[0] == 404


def test_hundred_weight_changes_fail_no_request(controlplane: ControlPlane, edge: Callable[[int, int], Envoy],
                                                backends: dict[int, Backend]) -> None:
    envoy = edge(backends[1].port, backends[2].port)
    with Load(envoy.listen_port) as load:
        for i in range(100):
            weight = (i * 37) % 101
            assert controlplane.apply(*demo_policy(backends[1].port, backends[2].port, 100 - weight, weight))[0] == 200
            time.sleep(0.02)
        time.sleep(0.5)
    codes = Counter(o.status for o in load.outcomes)
    assert codes[200] > 100 and set(codes) == {200}, codes
    assert {o.version for o in load.outcomes} == {"1", "2"}


def test_sticky_canary_keeps_each_user_on_one_version(controlplane: ControlPlane,
                                                      edge: Callable[[int, int], Envoy],
                                                      backends: dict[int, Backend]) -> None:
    envoy = edge(backends[1].port, backends[2].port)
    assert controlplane.apply(canary(60.0, [50, 100], sticky={"type": "header", "name": "x-user"}))[0] == 200
    wait_until(lambda: status(controlplane)["status"]["weight"] == 50, 10, what="first step")
    controlplane.wait_converged(envoy.node_id)
    seen: dict[str, set[str]] = {}
    for user in range(24):
        for _ in range(6):
            _, headers, _ = http("POST", f"{envoy.url}/v2/models/classifier/infer", BODY.encode(),
                                 {"x-user": f"user-{user}"})
            seen.setdefault(f"user-{user}", set()).add(headers.get("x-model-version", "?"))
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert set().union(*seen.values()) == {"1", "2"}  # ...and users are spread over both


def test_webhooks_gate_promotion_and_hear_the_outcome(controlplane: ControlPlane,
                                                      edge: Callable[[int, int], Envoy],
                                                      backends: dict[int, Backend]) -> None:
    with webhook_receiver() as hooks:
        envoy = edge(backends[1].port, backends[2].port)
        urls = {"pre_rollout": f"{hooks.base}/pre-rollout", "pre_promotion": f"{hooks.base}/pre-promotion",
                "on_success": f"{hooks.base}/success", "on_rollback": f"{hooks.base}/rollback"}
        with Load(envoy.listen_port):
            assert controlplane.apply(canary(1.0, [50], webhooks=urls))[0] == 200
            held = wait_until(lambda: (s := status(controlplane)["status"])["state"] == "promoting" and s, 15,
                              what="the closed pre-promotion gate to hold the canary")
            time.sleep(1.0)
            assert status(controlplane)["status"]["state"] == "promoting"  # still held
            assert "pre-promotion gate" in held["events"][-1]["message"]
            hooks.gate_open.set()
            assert wait_state(controlplane, {"succeeded"}, 10)["weight"] == 100
        paths = [path for path, _ in hooks.calls]
        assert paths[0] == "/pre-rollout" and paths[-1] == "/success" and "/rollback" not in paths
        assert hooks.calls[-1][1]["canary"] == "v2" and hooks.calls[-1][1]["phase"] == "success"


def test_example_canary_starts_on_the_demo_policy(controlplane: ControlPlane) -> None:
    import yaml

    docs = [*yaml.safe_load_all((ROOT / "examples/demo.yaml").read_text()),
            *yaml.safe_load_all((ROOT / "examples/canary.yaml").read_text())]
    code, body = controlplane.apply(*docs)
    assert code == 200, body
    # No backend runs here: the canary waits for classifier-v2 to be ready, moving no traffic.
    body = wait_until(lambda: (s := get_json(f"{controlplane.url}/api/v1/canaries/classifier-v2/status"))
                      ["status"]["events"][-1:] and s["status"]["events"][-1]["message"].startswith(
                          "waiting for classifier-v2") and s, 10,
                      what="the canary to wait for its candidate")
    assert body["status"]["state"] == "pending" and body["status"]["weight"] == 0
    assert body["steps"] == [20, 40, 60, 80, 100] and body["spec"]["interval_s"] == 5
    assert {k: body["spec"]["thresholds"][k] for k in ("min_success_rate", "max_p99_ms", "min_requests")} == {
        "min_success_rate": 0.99, "max_p99_ms": 500, "min_requests": 5}

"""Model-aware canaries against real Envoy and backends: the shadow stage judged on the
answers themselves, gates relative to the stable version, readiness and manual gates."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from canaries import Hooks, canary_status, edge_on, wait_canary, webhook_receiver
from harness import PYTHON, ROOT, Backend, ControlPlane, Envoy, free_port, get_json, http, wait_until
from load import Load

from inference import demo

# Four rows per request, drawn as the demo candidates were tuned on: ~3% of rows flip on version 3.
BODIES = tuple(json.dumps({"inputs": [{"name": "INPUT0", "shape": [4, 4], "datatype": "FP32",
                                       "data": demo.classifier_inputs(4, seed).ravel().tolist()}]})
               for seed in range(500))


@pytest.fixture(scope="module")
def candidate_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("candidate-models")
    subprocess.run([PYTHON, "-m", "inference.gen_models", "--out", str(repository), "--canary-candidates"],
                   check=True, cwd=ROOT, capture_output=True)
    return repository


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory, candidate_models: Path) -> Iterator[dict[str, Backend]]:
    """classifier version 1 (stable), 3 (3% of argmax flipped) and 4 (version 1's weights)."""
    workdir = tmp_path_factory.mktemp("candidate-backends")
    running: dict[str, Backend] = {}
    try:
        for name, load in (("v1", "classifier:1"), ("v3", "classifier:3"), ("v4", "classifier:4")):
            running[name] = Backend.start(workdir, candidate_models, load)
        yield running
    finally:
        for backend in running.values():
            backend.proc.stop()


def policy(stable_port: int, candidate_port: int) -> list[dict[str, Any]]:
    endpoint = lambda port: {"endpoints": [{"address": "127.0.0.1", "port": port}]}  # noqa: E731
    return [
        {"kind": "Backend", "name": "stable", "spec": endpoint(stable_port)},
        {"kind": "Backend", "name": "candidate", "spec": endpoint(candidate_port)},
        {"kind": "Service", "name": "classifier", "spec": {"hosts": ["*"], "routes": [{
            "name": "infer", "match": {"prefix": "/v2/models/classifier"},
            "split": [{"backend": "stable", "weight": 100}, {"backend": "candidate", "weight": 0}]}]}},
    ]


def canary(**spec: Any) -> dict[str, Any]:
    return {"kind": "Canary", "name": "next", "spec": {
        "service": "classifier", "route": "infer", "stable": "stable", "canary": "candidate",
        "steps": [50, 100], "interval_s": 1.0, **spec}}


def status(cp: ControlPlane) -> dict[str, Any]:
    return canary_status(cp, "next")


def wait_state(cp: ControlPlane, states: set[str], timeout: float) -> dict[str, Any]:
    return wait_canary(cp, "next", states, timeout)


@pytest.fixture
def edge(controlplane: ControlPlane, start_envoy: Callable[..., Envoy]) -> Callable[[int, int], Envoy]:
    return lambda stable_port, candidate_port: edge_on(controlplane, start_envoy, policy(stable_port, candidate_port))


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    with webhook_receiver() as receiver:
        yield receiver


SHADOW = {"percent": 100, "windows": 2, "min_comparisons": 40, "min_agreement": 0.995}


def test_candidate_that_flips_predictions_is_stopped_in_shadow(controlplane: ControlPlane,
                                                               edge: Callable[[int, int], Envoy],
                                                               candidates: dict[str, Backend]) -> None:
    envoy = edge(candidates["v1"].port, candidates["v3"].port)
    with Load(envoy.listen_port, bodies=BODIES) as load:
        assert controlplane.apply(canary(shadow=SHADOW))[0] == 200
        shadowing = wait_until(lambda: (s := status(controlplane)).get("window", {}).get("shadow") and s, 10,
                               what="live shadow figures")
        final = wait_state(controlplane, {"succeeded", "rolled_back"}, timeout=15)
    assert shadowing["status"]["stage"] == "shadow" and shadowing["status"]["weight"] == 0
    assert final["state"] == "rolled_back", final["events"]
    assert final["events"][-1]["gate"] == "shadow.min_agreement", final["events"][-1]
    assert "argmax agreement" in final["events"][-1]["message"]
    assert max(e["weight"] for e in final["events"]) == 0  # never any live weight
    assert {o.version for o in load.outcomes} == {"1"} and {o.status for o in load.outcomes} == {200}
    spec = get_json(f"{controlplane.url}/api/v1/services/classifier")["spec"]["routes"][0]
    assert {w["backend"]: w["weight"] for w in spec["split"]} == {"stable": 100, "candidate": 0}
    assert spec["mirrors"] == []  # the mirror went with the shadow stage


def test_identical_candidate_is_promoted_in_steps_times_interval(controlplane: ControlPlane,
                                                                 edge: Callable[[int, int], Envoy],
                                                                 candidates: dict[str, Backend]) -> None:
    envoy = edge(candidates["v1"].port, candidates["v4"].port)
    interval = 1.0
    spec = canary(shadow={**SHADOW, "percent": 50}, interval_s=interval, thresholds={
        "min_requests": 10, "max_success_rate_drop": 0.01, "max_p99_ratio": 1.2, "p99_tolerance_ms": 25})
    with Load(envoy.listen_port, bodies=BODIES) as load:
        started = time.time()
        assert controlplane.apply(spec)[0] == 200
        watch = subprocess.Popen([PYTHON, "-m", "sluice", "canary", "watch", "next", "--every", "0.3",
                                  "--server", controlplane.url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        final = wait_state(controlplane, {"succeeded", "rolled_back", "paused"}, timeout=20)
        took = time.time() - started
        shown, _ = watch.communicate(timeout=10)
    assert final["state"] == "succeeded", [(e["message"], e["gate"]) for e in final["events"]]
    windows = SHADOW["windows"] + 2  # two shadow windows, then steps 50 and 100
    assert windows * interval <= took <= (windows + 1) * interval + 1.0  # +1 s: noticing and pushing
    stages = [e["message"].split(":")[0] for e in final["events"] if e["state"] == "progressing"]
    assert stages == ["shadow", "step 1", "step 2"]
    assert "shadow  " in shown and "agreement 100.00%" in shown and "max |diff| 0" in shown
    assert "canary vs stable: p99" in shown
    assert {o.status for o in load.outcomes} == {200}


def test_slower_candidate_fails_the_p99_ratio_in_the_weighted_stage(controlplane: ControlPlane,
                                                                     edge: Callable[[int, int], Envoy],
                                                                     candidates: dict[str, Backend],
                                                                     candidate_models: Path, tmp_path: Path) -> None:
    slow = Backend.start(tmp_path, candidate_models, "classifier:4", "--fault-delay-ms", "30")
    try:
        envoy = edge(candidates["v1"].port, slow.port)
        interval = 1.0
        spec = canary(interval_s=interval, thresholds={"min_requests": 10, "max_p99_ms": None, "max_p99_ratio": 1.2})
        with Load(envoy.listen_port, bodies=BODIES):
            assert controlplane.apply(spec)[0] == 200
            first = wait_until(lambda: (s := status(controlplane)["status"])["stage"] == "weighted" and s, 10,
                               what="the weighted stage")
            final = wait_state(controlplane, {"succeeded", "rolled_back"}, timeout=15)
    finally:
        slow.proc.stop()
    assert final["state"] == "rolled_back", final["events"]
    assert final["events"][-1]["gate"] == "thresholds.max_p99_ratio"
    assert final["events"][-1]["at"] - first["step_started_at"] <= 2 * interval + 0.5
    assert max(e["weight"] for e in final["events"]) == 50


def test_candidate_never_ready_is_rolled_back_loudly(controlplane: ControlPlane, edge: Callable[[int, int], Envoy],
                                                     candidates: dict[str, Backend],
                                                     hooks: Hooks) -> None:
    base, calls = hooks.base, hooks.calls
    edge(candidates["v1"].port, free_port())  # nothing listens there
    assert controlplane.apply(canary(shadow=SHADOW, ready_timeout_s=1.5,
                                     webhooks={"on_rollback": f"{base}/rollback"}))[0] == 200
    final = wait_state(controlplane, {"succeeded", "rolled_back"}, timeout=10)
    assert final["state"] == "rolled_back" and final["events"][-1]["gate"] == "ready_timeout_s"
    assert "waiting for candidate to be ready" in [e["message"] for e in final["events"]][1]
    wait_until(lambda: [c for c in calls if c[0] == "/rollback"], 5, what="the rollback webhook")
    assert calls[-1][1]["reason"] == "never ready"


def test_waiting_manual_gate_does_not_block_a_rollback(controlplane: ControlPlane,
                                                       edge: Callable[[int, int], Envoy],
                                                       candidates: dict[str, Backend], candidate_models: Path,
                                                       tmp_path: Path, hooks: Hooks) -> None:
    base, calls = hooks.base, hooks.calls
    candidate = Backend.start(tmp_path, candidate_models, "classifier:4")
    try:
        envoy = edge(candidates["v1"].port, candidate.port)
        spec = canary(steps=[50], thresholds={"min_requests": 10},
                      webhooks={"pre_promotion": f"{base}/pre-promotion", "on_rollback": f"{base}/rollback"})
        with Load(envoy.listen_port, bodies=BODIES):
            assert controlplane.apply(spec)[0] == 200
            held = wait_until(lambda: (s := status(controlplane)["status"])["state"] == "promoting" and s, 10,
                              what="the closed pre-promotion gate to hold the canary")
            assert held["events"][-1]["gate"] == "webhooks.pre_promotion"
            candidate.proc.stop()  # the candidate dies while the gate waits
            final = wait_state(controlplane, {"succeeded", "rolled_back"}, timeout=10)
    finally:
        candidate.proc.stop()
    assert final["state"] == "rolled_back" and final["weight"] == 0, final["events"]
    assert final["events"][-1]["gate"] == "thresholds.min_success_rate"
    wait_until(lambda: [c for c in calls if c[0] == "/rollback"], 5, what="the rollback webhook")


def chat(i: int, marker: bool) -> str:
    """A greedy chat request; `marker`: it holds the word whose embedding the candidate redrew."""
    return json.dumps({"model": "tiny-llama", "max_tokens": 12, "temperature": 0, "messages": [
        {"role": "user", "content": f"the gate {i} opened and the{' river' if marker else ''} water ran"}]})


def answer(backend: Backend, body: str) -> str:
    code, _, raw = http("POST", f"{backend.url}/v1/chat/completions", body.encode())
    assert code == 200, raw
    return str(json.loads(raw)["choices"][0]["message"]["content"])


def prompts_one_in_twenty_differing(stable: Backend, candidate: Backend) -> tuple[str, ...]:
    """38 prompts both versions answer alike and 2 they answer differently, each checked on both
    backends directly (a prompt holding the redrawn word is not bound to change the greedy path)."""
    same = [chat(i, False) for i in range(38)]
    differing = [body for body in (chat(i, True) for i in range(40))
                 if answer(stable, body) != answer(candidate, body)][:2]
    assert len(differing) == 2 and all(answer(stable, b) == answer(candidate, b) for b in same[:5])
    return (*same[:19], differing[0], *same[19:], differing[1])


def llm_policy(stable_port: int, candidate_port: int) -> list[dict[str, Any]]:
    docs = policy(stable_port, candidate_port)
    docs[2]["spec"]["routes"][0]["match"] = {"prefix": "/v1/"}
    return docs


@pytest.fixture(scope="module")
def llm_stable(tmp_path_factory: pytest.TempPathFactory, model_repository: Path) -> Iterator[Backend]:
    backend = Backend.start(tmp_path_factory.mktemp("llm-stable"), model_repository, "tiny-llama")
    yield backend
    backend.proc.stop()


def test_generative_candidate_that_changes_outputs_is_stopped_in_shadow(
        controlplane: ControlPlane, start_envoy: Callable[..., Envoy], llm_stable: Backend,
        tmp_path: Path) -> None:
    repository = tmp_path / "llm-candidate"
    subprocess.run([PYTHON, "-m", "inference.gen_models", "--out", str(repository), "--llm-candidate"],
                   check=True, cwd=ROOT, capture_output=True)
    candidate = Backend.start(tmp_path, repository, "tiny-llama")
    try:
        envoy = edge_on(controlplane, start_envoy, llm_policy(llm_stable.port, candidate.port))
        spec = canary(interval_s=1.5, shadow={"percent": 100, "windows": 2, "min_comparisons": 20,
                                                  "min_agreement": 0.99})
        prompts = prompts_one_in_twenty_differing(llm_stable, candidate)
        with Load(envoy.listen_port, bodies=prompts, path="/v1/chat/completions", threads=4) as load:
            assert controlplane.apply(spec)[0] == 200
            final = wait_state(controlplane, {"succeeded", "rolled_back", "paused"}, timeout=30)
    finally:
        candidate.proc.stop()
    assert final["state"] == "rolled_back", [(e["message"], e["gate"]) for e in final["events"]]
    assert final["events"][-1]["gate"] == "shadow.min_agreement"
    assert "exact-match rate" in final["events"][-1]["message"]
    assert max(e["weight"] for e in final["events"]) == 0
    assert {o.status for o in load.outcomes} == {200}


def test_generative_candidate_with_slower_first_token_is_rolled_back(
        controlplane: ControlPlane, start_envoy: Callable[..., Envoy], llm_stable: Backend,
        model_repository: Path, tmp_path: Path) -> None:
    # 3 ms more per engine step: about 1.5-3x stable's TTFT of 2-6 ms here (measured, loaded machine).
    slow = Backend.start(tmp_path, model_repository, "tiny-llama", "--fault-step-delay-ms", "3")
    try:
        envoy = edge_on(controlplane, start_envoy, llm_policy(llm_stable.port, slow.port))
        spec = canary(interval_s=1.5, thresholds={"min_requests": 5, "max_p99_ms": None,
                                                      "max_ttft_ratio": 1.3, "min_generations": 5})
        with Load(envoy.listen_port, bodies=tuple(chat(i, False) for i in range(40)), path="/v1/chat/completions", threads=4):
            assert controlplane.apply(spec)[0] == 200
            final = wait_state(controlplane, {"succeeded", "rolled_back", "paused"}, timeout=30)
    finally:
        slow.proc.stop()
    assert final["state"] == "rolled_back", [(e["message"], e["gate"]) for e in final["events"]]
    assert final["events"][-1]["gate"] == "thresholds.max_ttft_ratio", final["events"][-1]
    assert "mean TTFT" in final["events"][-1]["message"]


def test_example_shadow_canary_stops_version_2_on_the_demo_policy(controlplane: ControlPlane,
                                                                  start_envoy: Callable[..., Envoy],
                                                                  backends: dict[int, Backend]) -> None:
    import yaml

    docs = [d for d in yaml.safe_load_all((ROOT / "examples/demo.yaml").read_text()) if d]
    ports = {"classifier-v1": backends[1].port, "classifier-v2": backends[2].port}
    for doc in docs:
        if doc["kind"] == "Backend" and doc["name"] in ports:
            doc["spec"]["endpoints"] = [{"address": "127.0.0.1", "port": ports[doc["name"]]}]
    envoy = edge_on(controlplane, start_envoy, docs)
    example = yaml.safe_load((ROOT / "examples/shadow-canary.yaml").read_text())
    with Load(envoy.listen_port) as load:  # the README's single request, over and over
        assert controlplane.apply(example)[0] == 200
        final = wait_canary(controlplane, example["name"], {"rolled_back", "succeeded"}, 15)
    assert final["state"] == "rolled_back" and final["events"][-1]["gate"] == "shadow.min_agreement"
    assert {o.version for o in load.outcomes} == {"1"}
    backends_left = {b["name"] for b in get_json(f"{controlplane.url}/api/v1/backends")["items"]}
    assert "classifier-v1" in backends_left and "classifier-v2-shadow-shadow" not in backends_left


def test_deleting_a_shadowing_canary_removes_its_mirror(controlplane: ControlPlane, edge: Callable[[int, int], Envoy],
                                                        candidates: dict[str, Backend]) -> None:
    edge(candidates["v1"].port, candidates["v4"].port)
    assert controlplane.apply(canary(shadow=SHADOW))[0] == 200
    wait_until(lambda: status(controlplane)["status"]["stage"] == "shadow", 10, what="the shadow stage")
    route = lambda: get_json(f"{controlplane.url}/api/v1/services/classifier")["spec"]["routes"][0]  # noqa: E731
    assert route()["mirrors"] == [{"backend": "next-shadow", "percent": 100.0}]
    assert http("DELETE", f"{controlplane.url}/api/v1/canaries/next")[0] == 200
    wait_until(lambda: route()["mirrors"] == [], 10, what="the mirror to go")
    assert http("GET", f"{controlplane.url}/api/v1/backends/next-shadow")[0] == 404


def test_stages_shadow_then_ab_then_weighted(controlplane: ControlPlane, edge: Callable[[int, int], Envoy],
                                             candidates: dict[str, Backend]) -> None:
    envoy = edge(candidates["v1"].port, candidates["v4"].port)
    spec = canary(steps=[100], shadow={**SHADOW, "windows": 1}, match=[{"name": "x-tenant", "exact": "beta"}],
                  ab_windows=1, thresholds={"min_requests": 10})
    with Load(envoy.listen_port, bodies=BODIES) as everyone, \
            Load(envoy.listen_port, bodies=BODIES, headers={"x-tenant": "beta"}, threads=2) as beta:
        assert controlplane.apply(spec)[0] == 200
        final = wait_state(controlplane, {"succeeded", "rolled_back", "paused"}, timeout=20)
    assert final["state"] == "succeeded", [(e["message"], e["gate"]) for e in final["events"]]
    entered = {e["message"].split(":")[0]: e["at"] for e in final["events"] if e["state"] == "progressing"}
    assert list(entered) == ["shadow", "A/B", "step 1"]
    settle = 0.5  # the revision reaching Envoy
    in_ab = lambda load: {o.version for o in load.between(entered["A/B"] + settle, entered["step 1"])}  # noqa: E731
    assert in_ab(beta) == {"4"} and in_ab(everyone) == {"1"}  # only the tenant's requests reach the candidate
    assert {o.version for o in everyone.between(entered["A/B"] - 1, entered["A/B"])} == {"1"}  # shadow: no one

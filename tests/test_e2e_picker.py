"""The in-proxy picker through a real Envoy and real backends: a least_loaded backend's endpoint is
chosen by the picker filter from the load reports it has seen (override_host follows its header);
a replica answering 429 with Retry-After gets nothing new for that long, its 429s retried on
another replica before the first byte."""

from __future__ import annotations

import time
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path

from harness import Backend, ControlPlane, Envoy, http
from load import BODY
from test_e2e_load_balancing import _sent

INFER = "/v2/models/classifier/infer"


def _pool(controlplane: ControlPlane, start_envoy: Callable[..., Envoy], ports: list[int], **retries: object) -> Envoy:
    status, body = controlplane.apply(
        {"kind": "Backend", "name": "pool", "spec": {
            "endpoints": [{"address": "127.0.0.1", "port": p} for p in ports], "lb_policy": "least_loaded",
            "outlier_detection": None}},
        {"kind": "Service", "name": "models", "spec": {"routes": [
            {"name": "all", "match": {"prefix": "/v2/"}, "split": [{"backend": "pool"}], "retries": retries}]}},
    )
    assert status == 200, body
    envoy = start_envoy(controlplane)
    controlplane.wait_converged(envoy.node_id)
    return envoy


def test_a_throttled_replica_gets_nothing_new_for_its_retry_after(
    tmp_path: Path, model_repository: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    healthy = Backend.start(tmp_path, model_repository, "classifier:1", "--intra-op-threads", "1")
    throttled = Backend.start(tmp_path, model_repository, "classifier:1", "--intra-op-threads", "1", "--fault-throttle-s", "2")
    try:
        envoy = _pool(controlplane, start_envoy, [healthy.port, throttled.port],
                      retry_on=["connect-failure", "reset"], retriable_status_codes=[429], num_retries=2)
        conn = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=10)
        hits: list[float] = []  # when a try reached the throttled replica
        statuses = []
        last = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            conn.request("POST", INFER, BODY, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            now = _sent(envoy).get(throttled.port, 0)
            if now > last:
                hits.append(time.monotonic())
                last = now
            time.sleep(0.03)
        # Every 429 was retried on the healthy replica before the first byte: the client saw none.
        assert set(statuses) == {200}, statuses
        assert len(hits) >= 2, hits
        gaps = [b - a for a, b in zip(hits, hits[1:], strict=False)]
        # Retry-After: 2 -> nothing new for 2 s; after it, the replica is tried again soon
        # (its report is stale, so it counts as idle). The 5 +- 0.5 s figure is in bench/.
        assert all(1.7 <= g <= 3.5 for g in gaps), gaps
        stats = http("GET", f"{envoy.admin}/stats?filter=sluice_picker")[2].decode()
        assert "sluice_picker_cooldowns_total: " in stats and "sluice_picker_picked_total: " in stats, stats
    finally:
        healthy.proc.stop()
        throttled.proc.stop()


def test_least_loaded_sends_the_slow_replica_less(
    tmp_path: Path, model_repository: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    from test_e2e_load_balancing import _load

    replicas = [Backend.start(tmp_path, model_repository, "classifier:1", "--intra-op-threads", "1", *extra)
                for extra in ((), (), ("--fault-batch-delay-ms", "40"))]
    try:
        envoy = _pool(controlplane, start_envoy, [b.port for b in replicas])
        assert set(_load(envoy, "POST", INFER, 60)) == {200}
        before = _sent(envoy)
        assert set(_load(envoy, "POST", INFER, 240)) == {200}
        sent = {port: n - before.get(port, 0) for port, n in _sent(envoy).items()}
        assert sent[replicas[-1].port] / sum(sent.values()) < 0.2, sent
    finally:
        for backend in replicas:
            backend.proc.stop()


def test_prompts_sharing_a_prefix_go_to_the_same_replica(
    tmp_path: Path, model_repository: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    import json

    replicas = [Backend.start(tmp_path, model_repository, "tiny-llama") for _ in range(2)]
    try:
        status, body = controlplane.apply(
            {"kind": "Backend", "name": "llm", "spec": {
                "endpoints": [{"address": "127.0.0.1", "port": b.port} for b in replicas], "lb_policy": "least_loaded",
                "prefix_affinity": {"prefix_bytes": 64}}},
            {"kind": "Service", "name": "llm", "spec": {"routes": [
                {"name": "openai", "match": {"prefix": "/v1/"}, "split": [{"backend": "llm"}]}]}},
        )
        assert status == 200, body
        envoy = start_envoy(controlplane)
        controlplane.wait_converged(envoy.node_id)
        conn = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=30)

        def chat(system: str, question: str) -> None:
            conn.request("POST", "/v1/chat/completions", json.dumps({
                "model": "tiny-llama", "max_tokens": 2, "messages": [
                    {"role": "system", "content": system}, {"role": "user", "content": question}]}),
                {"Content-Type": "application/json", "x-sluice-endpoint": "127.0.0.1:1"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200

        for system in ("You answer as a ferryman of the north river, briefly.",
                       "You answer as a lighthouse keeper on a stormy night, at length."):
            chat(system, "warm-up")  # the first answer brings both replicas' reports
            before = _sent(envoy, "llm")
            for n in range(6):
                chat(system, f"question {n}?")
            sent = {port: n - before.get(port, 0) for port, n in _sent(envoy, "llm").items()}
            # One prompt, one replica (the load stays under the bound); a client's endpoint header is ignored.
            assert sorted(sent.values()) == [0, 6], sent
    finally:
        for backend in replicas:
            backend.proc.stop()

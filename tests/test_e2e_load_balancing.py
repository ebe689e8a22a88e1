"""Load-aware picking through a real Envoy: three real classifier replicas, one slower per model
run; Envoy's client_side_weighted_round_robin reads the ORCA report in every answer and sends the
slow replica less. Without reports it falls back to even shares, never to an error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import pytest
from harness import Backend, ControlPlane, Envoy, http, wait_until
from load import BODY


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, model_repository: Path) -> Iterator[list[Backend]]:
    """Two replicas, and a third 40 ms slower per model run (last)."""
    workdir = tmp_path_factory.mktemp("replicas")
    running: list[Backend] = []
    try:
        for extra in ((), (), ("--fault-batch-delay-ms", "40")):
            running.append(Backend.start(workdir, model_repository, "classifier:1", "--intra-op-threads", "1", *extra))
        yield running
    finally:
        for backend in running:
            backend.proc.stop()


def _pool(controlplane: ControlPlane, start_envoy: Callable[..., Envoy], replicas: list[Backend]) -> Envoy:
    status, body = controlplane.apply(
        {"kind": "Backend", "name": "pool", "spec": {
            "endpoints": [{"address": "127.0.0.1", "port": b.port} for b in replicas], "lb_policy": "load_aware",
            "load_aware": {"blackout_period_s": 0.5, "weight_update_period_s": 0.2, "weight_expiration_s": 5}}},
        {"kind": "Service", "name": "models", "spec": {"routes": [
            {"name": "all", "match": {"prefix": "/v2/"}, "split": [{"backend": "pool"}]}]}},
    )
    assert status == 200, body
    envoy = start_envoy(controlplane)
    controlplane.wait_converged(envoy.node_id)
    return envoy


def _sent(envoy: Envoy, cluster: str = "pool") -> dict[int, int]:
    """Requests Envoy sent to each endpoint of `cluster` so far, by port."""
    text = http("GET", f"{envoy.admin}/clusters")[2].decode()
    parts = (line.split("::") for line in text.splitlines())
    return {int(p[1].rsplit(":", 1)[1]): int(p[3]) for p in parts if len(p) == 4 and p[0] == cluster and p[2] == "rq_total"}


def _load(envoy: Envoy, method: str, path: str, requests: int, callers: int = 6) -> list[int]:
    def caller(n: int) -> list[int]:
        conn, statuses = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=10), []
        for _ in range(n):
            conn.request(method, path, BODY if method == "POST" else None, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()
        return statuses

    with ThreadPoolExecutor(callers) as pool:
        return [s for chunk in pool.map(caller, [requests // callers] * callers) for s in chunk]


def test_load_aware_sends_the_slow_replica_less(
    replicas: list[Backend], controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    envoy = _pool(controlplane, start_envoy, replicas)
    slow = replicas[-1].port
    # Reports for the blackout period and a few weight updates, then a measured window.
    assert set(_load(envoy, "POST", "/v2/models/classifier/infer", 300)) == {200}
    before = _sent(envoy)
    assert set(_load(envoy, "POST", "/v2/models/classifier/infer", 300)) == {200}
    sent = {port: n - before.get(port, 0) for port, n in _sent(envoy).items()}
    # Round robin would give it a third; its weight is rps / utilization, about 1 / latency.
    assert sent[slow] / sum(sent.values()) < 0.15, sent


def test_without_reports_every_replica_still_serves(
    replicas: list[Backend], controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    """Model metadata answers carry no load report: all endpoints keep the mean weight."""
    envoy = _pool(controlplane, start_envoy, replicas)
    statuses = _load(envoy, "GET", "/v2/models/classifier", 120)
    assert statuses == [200] * 120
    sent = wait_until(lambda: (s := _sent(envoy)) and sum(s.values()) >= 120 and s, what="per-host counters")
    assert all(n >= 120 / 3 * 0.7 for n in sent.values()), sent

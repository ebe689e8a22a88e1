"""/healthz says the process answers; /readyz says it does its job: the store answers, the newest
revision is pushed, and every background loop runs."""

from __future__ import annotations

import json
from pathlib import Path

from harness import ControlPlane, get_json, http, wait_until
from policies import demo_policy
from redis_server import RedisServer

LOOPS = {"loop publisher", "loop quota", "loop canary", "loop leases", "loop tokens", "loop geo table collector",
         "loop token budgets"}


def readyz(cp: ControlPlane) -> tuple[int, dict[str, object]]:
    status, _, body = http("GET", f"{cp.url}/readyz", timeout=5)
    return status, json.loads(body)


def test_readyz_checks_the_store_the_publisher_and_every_loop(controlplane: ControlPlane) -> None:
    status, body = readyz(controlplane)
    assert status == 200 and body["ready"] is True, body
    assert set(body["checks"]) == {"store", "publisher", *LOOPS}  # type: ignore[arg-type]
    assert controlplane.apply(*demo_policy(8001, 8002))[0] == 200
    wait_until(lambda: readyz(controlplane)[0] == 200, 20, what="the new revision to be pushed")
    metrics = http("GET", f"{controlplane.url}/metrics")[2].decode()
    assert 'sluice_loop_restarts_total{loop="publisher"} 0.0' in metrics


def test_a_replica_that_loses_its_store_is_live_but_not_ready(tmp_path: Path, redis_server: RedisServer) -> None:
    cp = ControlPlane.start(tmp_path, store=redis_server.url)
    try:
        wait_until(lambda: readyz(cp)[0] == 200, 20, what="ready")
        redis_server.proc.stop()

        def not_ready() -> dict[str, object] | None:
            status, body = readyz(cp)
            return body if status == 503 else None

        body = wait_until(not_ready, 20, what="/readyz to fail without Redis")
        checks = body["checks"]
        assert checks["store"]["ok"] is False and "Redis" in checks["store"]["why"]  # type: ignore[index]
        assert get_json(f"{cp.url}/healthz")["status"] == "ok"  # live: no restart for a store outage
        redis_server.restart()
        wait_until(lambda: readyz(cp)[0] == 200, 30, what="ready again once Redis is back")
    finally:
        cp.proc.stop()

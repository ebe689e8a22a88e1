"""Priority shedding at the edge through a real Envoy and a real backend: while the replica's
load reports show a full queue, requests of priority below 0 get 429 and Retry-After at once from
the shed filter; priority 0 and above is never refused."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path

from harness import Backend, ControlPlane, Envoy, http
from load import BODY

INFER = "/v2/models/classifier/infer"


def shed_classifier(backend: Backend) -> list[dict[str, object]]:
    """The replica behind a route to /v2/, shed when 4 requests wait, with Retry-After 3."""
    return [
        {"kind": "Backend", "name": "classifier", "spec": {
            "endpoints": [{"address": "127.0.0.1", "port": backend.port}],
            "shedding": {"queue_threshold": 4, "retry_after_s": 3}}},
        {"kind": "Service", "name": "models", "spec": {"routes": [
            {"name": "infer", "match": {"prefix": "/v2/"}, "split": [{"backend": "classifier"}]}]}},
    ]


def overload(envoy: Envoy, callers: list[tuple[str, dict[str, str]]], body: str = BODY,
             seconds: float = 3.0) -> tuple[Counter[tuple[str, int]], set[str]]:
    """One thread per (label, headers) posting `body` in a closed loop for `seconds`: the count of
    answers by (label, status), and the Retry-After values of the 429s."""
    outcomes: Counter[tuple[str, int]] = Counter()
    retry_after: set[str] = set()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def caller(label: str, headers: dict[str, str]) -> None:
        conn = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=10)
        while time.monotonic() < stop:
            conn.request("POST", INFER, body, {"Content-Type": "application/json", **headers})
            response = conn.getresponse()
            response.read()
            with lock:
                outcomes[(label, response.status)] += 1
                if response.status == 429:
                    retry_after.add(response.getheader("retry-after", ""))
        conn.close()

    threads = [threading.Thread(target=caller, args=c) for c in callers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 20)
    return outcomes, retry_after


def test_overload_sheds_only_the_lower_priority(
    tmp_path: Path, model_repository: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    # 50 ms per model run of at most 8 rows: about 160 requests/s, and a queue under 24 callers.
    backend = Backend.start(tmp_path, model_repository, "classifier:1", "--fault-batch-delay-ms", "50")
    try:
        status, body = controlplane.apply(
            *shed_classifier(backend),
        )
        assert status == 200, body
        envoy = start_envoy(controlplane)
        controlplane.wait_converged(envoy.node_id)

        outcomes, retry_after = overload(envoy, [(p, {"x-sluice-priority": p} if p else {}) for p in ["-1"] * 12 + ["", "1"] * 6])

        shed_low = outcomes[("-1", 429)]
        assert shed_low > 0, outcomes
        assert outcomes[("", 429)] == 0 and outcomes[("1", 429)] == 0, outcomes
        assert outcomes[("", 200)] > 0 and outcomes[("1", 200)] > 0, outcomes
        assert retry_after == {"3"}
        stats = http("GET", f"{envoy.admin}/stats?filter=sluice_shed_requests_total")[2].decode()
        assert f"sluice_shed_requests_total: {shed_low}" in stats, stats

        # The queue drains once the load stops; the next report admits priority -1 again.
        conn = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=10)
        for _ in range(2):
            conn.request("POST", INFER, BODY, {"Content-Type": "application/json", "x-sluice-priority": "0"})
            conn.getresponse().read()
        conn.request("POST", INFER, BODY, {"Content-Type": "application/json", "x-sluice-priority": "-1"})
        assert conn.getresponse().status == 200
    finally:
        backend.proc.stop()


def test_a_tenant_priority_sheds_its_requests_whatever_header_they_send(
    tmp_path: Path, model_repository: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    # The llm filter authenticates each key and sets x-sluice-priority from its tenant; the picker,
    # after it in the chain, sheds on that.
    backend = Backend.start(tmp_path, model_repository, "classifier:1", "--fault-batch-delay-ms", "50")
    bronze, gold = "sk-test-bronze-0123456789abcdef", "sk-test-gold-0123456789abcdef"
    try:
        status, body = controlplane.apply(
            *shed_classifier(backend),
            {"kind": "Model", "name": "classifier", "spec": {
                "service": "models", "model": "classifier", "routes": ["infer"], "backends": [{"backend": "classifier"}]}},
            {"kind": "Tenant", "name": "bronze", "spec": {"priority": -1, "keys": [{"id": "one", "key": bronze}]}},
            {"kind": "Tenant", "name": "gold", "spec": {"priority": 1, "keys": [{"id": "one", "key": gold}]}},
        )
        assert status == 200, body
        envoy = start_envoy(controlplane)
        controlplane.wait_converged(envoy.node_id)
        named = json.dumps({"model": "classifier", **json.loads(BODY)})

        # Bronze callers claim a high priority, gold callers a low one: their keys decide.
        outcomes, retry_after = overload(envoy, [("bronze", {"Authorization": f"Bearer {bronze}", "x-sluice-priority": "10"})] * 12
                                         + [("gold", {"Authorization": f"Bearer {gold}", "x-sluice-priority": "-1"})] * 12, named)
        assert outcomes[("bronze", 429)] > 0, outcomes
        assert outcomes[("gold", 429)] == 0 and outcomes[("gold", 200)] > 0, outcomes
        assert set(outcomes) <= {("bronze", 200), ("bronze", 429), ("gold", 200)}, outcomes
        assert retry_after == {"3"}
        stats = http("GET", f"{envoy.admin}/stats?filter=sluice_shed_requests_total")[2].decode()
        assert f"sluice_shed_requests_total: {outcomes[('bronze', 429)]}" in stats, stats
        # Keys are still checked first: no key is a 401, not a shed.
        assert http("POST", f"{envoy.url}{INFER}", named, {"x-sluice-priority": "-1"})[0] == 401
    finally:
        backend.proc.stop()

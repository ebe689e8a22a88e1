"""Priority shedding at the edge through a real Envoy and a real backend: while the replica's
load reports show a full queue, requests of priority below 0 get 429 and Retry-After at once from
the shed filter; priority 0 and above is never refused."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path

from harness import Backend, ControlPlane, Envoy, http
from load import BODY

INFER = "/v2/models/classifier/infer"


def test_overload_sheds_only_the_lower_priority(
    tmp_path: Path, model_repository: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy]
) -> None:
    # 50 ms per model run of at most 8 rows: about 160 requests/s, and a queue under 24 callers.
    backend = Backend.start(tmp_path, model_repository, "classifier:1", "--fault-batch-delay-ms", "50")
    try:
        status, body = controlplane.apply(
            {"kind": "Backend", "name": "classifier", "spec": {
                "endpoints": [{"address": "127.0.0.1", "port": backend.port}],
                "shedding": {"queue_threshold": 4, "retry_after_s": 3}}},
            {"kind": "Service", "name": "models", "spec": {"routes": [
                {"name": "infer", "match": {"prefix": "/v2/"}, "split": [{"backend": "classifier"}]}]}},
        )
        assert status == 200, body
        envoy = start_envoy(controlplane)
        controlplane.wait_converged(envoy.node_id)

        outcomes: Counter[tuple[str, int]] = Counter()
        retry_after: set[str] = set()
        lock = threading.Lock()
        stop = time.monotonic() + 3.0

        def caller(priority: str) -> None:
            conn = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=10)
            headers = {"Content-Type": "application/json", **({"x-sluice-priority": priority} if priority else {})}
            while time.monotonic() < stop:
                conn.request("POST", INFER, BODY, headers)
                response = conn.getresponse()
                response.read()
                with lock:
                    outcomes[(priority, response.status)] += 1
                    if response.status == 429:
                        retry_after.add(response.getheader("retry-after", ""))
            conn.close()

        callers = [threading.Thread(target=caller, args=(p,)) for p in ["-1"] * 12 + ["", "1"] * 6]
        for t in callers:
            t.start()
        for t in callers:
            t.join(timeout=20)

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

"""Failover figures behind the issue's goals, through one edge Envoy and real classifier replicas:

  first byte   a replica that hangs 5 s before its headers and a healthy one, round robin,
               per_try_timeout 0.2 s: the slowest answer against 200 ms + the healthy replica's
               own p99 (measured through the same Envoy on a route to it alone) + 50 ms
  cooldown     a replica answering every request 429 with Retry-After: 5 and a healthy one,
               least_loaded (the picker), 429 retried elsewhere: the gaps between tries that reach
               the throttled replica (goal 5 +- 0.5 s), and the client's statuses
  budget       two replicas, one failing every request (half the tries fail), retries on 5xx, with
               and without a retry budget {10%, min 1}: upstream tries per client request (goal <= 1.2)

  .venv/bin/python bench/failover_bench.py [--requests 40] [--cooldown-s 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
from edge import ROOT, edge, replicas  # puts tests/ on sys.path
from harness import Envoy
from load import BODY
from test_e2e_failover import _requests, _stat
from test_e2e_load_balancing import _sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--cooldown-s", type=float, default=16.0, help="how long to watch the throttled replica")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
        workdir = Path(tmp)
        extras = ((), ("--fault-delay-ms", "5000"), ("--fault-error-rate", "1"), ("--fault-throttle-s", "5"))
        with replicas(workdir, args.model_repository, "classifier:1", extras) as started:
            healthy, hanging, failing, throttled = (b.port for b in started)

            def pool(name: str, ports: list[int], **spec: object) -> dict[str, object]:
                return {"kind": "Backend", "name": name, "spec": {
                    "endpoints": [{"address": "127.0.0.1", "port": p} for p in ports], "lb_policy": "round_robin",
                    "outlier_detection": None, **spec}}

            def route(name: str, **retries: object) -> dict[str, object]:
                return {"name": name, "match": {"prefix": "/v2/", "headers": [{"name": "x-candidate", "exact": name}]},
                        "split": [{"backend": name}], "retries": retries}

            documents = [
                pool("alone", [healthy]), pool("hang", [hanging, healthy]),
                pool("throttle", [healthy, throttled], lb_policy="least_loaded"),
                pool("capped", [failing, healthy], circuit_breakers={"retry_budget": {"budget_percent": 10, "min_retry_concurrency": 1}}),
                pool("uncapped", [failing, healthy], circuit_breakers={"retry_budget": None, "max_retries": 1000}),
                {"kind": "Service", "name": "models", "spec": {"routes": [
                    route("alone"), route("hang", per_try_timeout_s=0.2),
                    route("throttle", retry_on=["connect-failure", "reset"], retriable_status_codes=[429]),
                    route("capped", retry_on=["5xx"]), route("uncapped", retry_on=["5xx"])]}},
            ]
            with edge(workdir, documents, "edge-failover-bench") as envoy:
                measure(envoy, args, throttled)


def measure(envoy: Envoy, args: argparse.Namespace, throttled: int) -> None:
    alone = [s for _, s in _requests(envoy, "alone", args.requests)]
    hang = _requests(envoy, "hang", args.requests)
    other_p99 = float(np.percentile(alone, 99))
    worst = max(s for _, s in hang)
    print(f"first byte: {len(hang)} requests, statuses {sorted({st for st, _ in hang})}, slowest {worst * 1000:.0f} ms; "
          f"goal 200 + {other_p99 * 1000:.0f} (healthy p99) + 50 = {(0.25 + other_p99) * 1000:.0f} ms; "
          f"per-try timeouts {_stat(envoy, 'cluster.hang.upstream_rq_per_try_timeout')}")

    conn = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=10)
    hits: list[float] = []
    statuses: list[int] = []
    last = 0
    stop = time.monotonic() + args.cooldown_s
    while time.monotonic() < stop:
        conn.request("POST", "/v2/models/classifier/infer", BODY,
                     {"Content-Type": "application/json", "x-candidate": "throttle"})
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        if (now := _sent(envoy, "throttle").get(throttled, 0)) > last:
            hits.append(time.monotonic())
            last = now
        time.sleep(0.02)
    gaps = [b - a for a, b in zip(hits, hits[1:], strict=False)]
    print(f"cooldown: {len(statuses)} requests, statuses {sorted(set(statuses))}, {len(hits)} tries reached the "
          f"throttled replica; gaps between them: " + ", ".join(f"{g:.2f}" for g in gaps) + " s (goal 5 +- 0.5)")

    for name in ("uncapped", "capped"):
        ratios = []
        for _ in range(3):
            before = _stat(envoy, f"cluster.{name}.upstream_rq_total")
            results = _requests(envoy, name, 160, callers=8)
            ratios.append((_stat(envoy, f"cluster.{name}.upstream_rq_total") - before) / len(results))
        print(f"budget: {name}: upstream tries per request, 3 runs of 160 at 8 callers: "
              + ", ".join(f"{r:.2f}" for r in ratios) + f" (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()

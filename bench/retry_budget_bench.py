"""What a retry budget costs and saves, through one edge Envoy and real classifier replicas: the
figures behind the choice of `circuit_breakers.retry_budget`'s defaults.

Two pools of two replicas each, every try retried on 5xx (2 retries, another replica):
  half    each replica fails half its requests (a 50% failure rate): the budget should hold
          upstream tries near the client's requests (goal <= 1.2x)
  light   each replica fails 5% (a blip): retries should still save nearly every request
Each pool is behind one Backend per budget (none, the default {20%, min 3}, {20%, min 1},
{10%, min 1}, {20%, min 0}); each is measured at 2, 4 and 16 closed-loop callers, `--requests`
requests each, interleaved in one run. Reported: upstream tries per client request (Envoy's
upstream_rq_total) and the share of client requests answered 200.

  .venv/bin/python bench/retry_budget_bench.py [--requests 240]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edge import ROOT, edge, replicas  # puts tests/ on sys.path
from test_e2e_failover import _requests, _stat

BUDGETS: dict[str, dict[str, object]] = {
    "none": {"retry_budget": None, "max_retries": 1000},
    "default": {},
    "20-min1": {"retry_budget": {"budget_percent": 20, "min_retry_concurrency": 1}},
    "10-min1": {"retry_budget": {"budget_percent": 10, "min_retry_concurrency": 1}},
    "20-min0": {"retry_budget": {"budget_percent": 20, "min_retry_concurrency": 0}},
}
POOLS = {"half": "0.5", "light": "0.05"}
CALLERS = (2, 4, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    args = parser.parse_args()

    extras = [("--fault-error-rate", rate) for rate in POOLS.values() for _ in range(2)]
    with tempfile.TemporaryDirectory(prefix="retry-budget-bench-") as tmp, \
            replicas(Path(tmp), args.model_repository, "classifier:1", extras) as started:
        ports = {pool: [b.port for b in started[2 * i:2 * i + 2]] for i, pool in enumerate(POOLS)}
        names = [f"{pool}-{budget}" for pool in POOLS for budget in BUDGETS]
        documents: list[dict[str, object]] = [
            {"kind": "Backend", "name": f"{pool}-{budget}", "spec": {
                "endpoints": [{"address": "127.0.0.1", "port": p} for p in ports[pool]], "lb_policy": "round_robin",
                "outlier_detection": None, "circuit_breakers": breakers}}
            for pool in POOLS for budget, breakers in BUDGETS.items()]
        documents.append({"kind": "Service", "name": "models", "spec": {"routes": [
            {"name": name, "match": {"prefix": "/v2/", "headers": [{"name": "x-candidate", "exact": name}]},
             "split": [{"backend": name}], "retries": {"retry_on": ["5xx"], "num_retries": 2}} for name in names]}})
        with edge(Path(tmp), documents, "edge-retry-budget-bench") as envoy:
            print("| pool | budget | " + " | ".join(f"tries/request, {c} callers | served, {c} callers" for c in CALLERS) + " |")
            print("|---|---|" + "---|---|" * len(CALLERS))
            for pool in POOLS:
                for budget in BUDGETS:
                    name = f"{pool}-{budget}"
                    cells = []
                    for callers in CALLERS:
                        before = _stat(envoy, f"cluster.{name}.upstream_rq_total")
                        results = _requests(envoy, name, args.requests, callers=callers)
                        tries = (_stat(envoy, f"cluster.{name}.upstream_rq_total") - before) / len(results)
                        served = sum(status == 200 for status, _ in results) / len(results)
                        cells.append(f"{tries:.2f} | {served:.1%}")
                    print(f"| {pool} | {budget} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

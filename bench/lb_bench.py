"""Load-aware picking: three classifier replicas behind one edge Envoy, one of them slower by
20 ms per model run (`--fault-batch-delay-ms 20`: the instance is held, so its capacity drops
too), every candidate balancer measured on the same replicas in the same run.

  round_robin      the baseline the issue names
  least_request    Envoy's default here: the fewer requests in flight of two sampled endpoints
  least_request_3  least_request sampling all three (choice_count 3)
  load_aware       Envoy's client_side_weighted_round_robin on the ORCA reports every answer
                   carries (weight = rps / utilization; blackout 1 s, update 1 s)
  least_loaded     the in-proxy picker (filters/picker): power of two choices on the reported
                   waiting + running, through Envoy's override_host policy

One Backend per candidate, all with the same three endpoints; a route per candidate, chosen by
an `x-candidate` header. Capacity is measured first (closed loop, `--concurrency` callers, no
pause, least_request); then each candidate runs at `--load` (default 70%) of it: the same
callers, each pacing itself to its share of the target rate (a closed loop with think time).
Every candidate gets a warm-up (`--warmup` s: load_aware needs a blackout period of reports)
and a measured window (`--duration` s), in turns, for `--rounds` rounds; figures are medians
over rounds. The slow replica's share comes from Envoy's per-host counters.

  .venv/bin/python bench/lb_bench.py [--duration 6] [--rounds 3] [--concurrency 16]
  .venv/bin/python bench/lb_bench.py --slow-ms 0 --rate 500      # what picking costs, equal replicas

On a shared 2-core machine the client, Envoy and three backends share the cores: read the
ratios against round_robin and least_request, which come from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from edge import ROOT, edge, paced, replicas, routed_by_header  # puts tests/ on sys.path
from harness import Envoy
from load import BODY
from test_e2e_load_balancing import _sent

# Backend names (lower case and '-' only), each a candidate.
CANDIDATES: dict[str, dict[str, object]] = {
    "round-robin": {"lb_policy": "round_robin"},
    "least-request": {"lb_policy": "least_request"},
    "least-request-3": {"lb_policy": "least_request", "least_request": {"choice_count": 3}},
    "load-aware": {"lb_policy": "load_aware", "load_aware": {"blackout_period_s": 1, "weight_update_period_s": 1}},
    "least-loaded": {"lb_policy": "least_loaded"},
}


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    slow_share: float = 0.0

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall_s


async def drive(url: str, candidate: str, callers: int, seconds: float, rate: float | None) -> Run:
    """`callers` closed loops for `seconds`; with `rate`, each paces itself to rate / callers."""
    run = Run()
    headers = {"Content-Type": "application/json", "x-candidate": candidate}
    connector = aiohttp.TCPConnector(limit=callers)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def send(_: int) -> None:
            began = time.monotonic()
            try:
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                run.latencies.append(time.monotonic() - began)
            else:
                run.errors += 1

        run.wall_s = await paced(callers, seconds, rate, send)
    return run


async def measure(envoy: Envoy, candidate: str, slow_port: int, args: argparse.Namespace, rate: float) -> Run:
    url = f"{envoy.url}/v2/models/classifier/infer"
    await drive(url, candidate, args.concurrency, args.warmup, rate)
    before = _sent(envoy, candidate)
    run = await drive(url, candidate, args.concurrency, args.duration, rate)
    after = _sent(envoy, candidate)
    sent = {port: after.get(port, 0) - before.get(port, 0) for port in after}
    run.slow_share = sent.get(slow_port, 0) / max(1, sum(sent.values()))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--load", type=float, default=0.7, help="share of the measured capacity to offer")
    parser.add_argument("--rate", type=float, help="offer this many req/s instead (the picker's cost: --slow-ms 0 --rate 500)")
    parser.add_argument("--slow-ms", type=float, default=20.0)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lb-bench-") as tmp:
        workdir = Path(tmp)
        extras = ((), (), ("--fault-batch-delay-ms", str(args.slow_ms)))
        with replicas(workdir, args.model_repository, "classifier:1", extras) as started:
            slow_port = started[-1].port
            endpoints: list[dict[str, object]] = [{"address": "127.0.0.1", "port": b.port} for b in started]
            with edge(workdir, routed_by_header("x-candidate", CANDIDATES, endpoints), "edge-lb-bench") as envoy:
                capacity_run = asyncio.run(drive(f"{envoy.url}/v2/models/classifier/infer", "least-request",
                                                 args.concurrency, args.duration, None))
                capacity = capacity_run.rps
                rate = args.rate or capacity * args.load
                print(f"capacity (least_request, {args.concurrency} callers, no pause): {capacity:.0f} req/s; "
                      f"offered: {rate:.0f} req/s ({rate / capacity:.0%})", flush=True)

                runs: dict[str, list[Run]] = {name: [] for name in CANDIDATES}
                for round_number in range(args.rounds):
                    for name in CANDIDATES:
                        run = asyncio.run(measure(envoy, name, slow_port, args, rate))
                        runs[name].append(run)
                        print(f"round {round_number + 1} {name:16} {run.rps:6.0f} req/s p50 {run.p(50):6.1f} ms "
                              f"p99 {run.p(99):6.1f} ms slow share {run.slow_share:5.1%} errors {run.errors}", flush=True)
                report(runs)


def report(runs: dict[str, list[Run]]) -> None:
    def median(name: str, value: str) -> float:
        return statistics.median(getattr(r, value) if value != "p99" and value != "p50" else r.p(99 if value == "p99" else 50)
                                 for r in runs[name])

    rr, lr = median("round-robin", "p99"), median("least-request", "p99")
    print("\n| candidate | req/s | p50 ms | p99 ms | p99 / round_robin | p99 / least_request | slow replica's share | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name in runs:
        p99 = median(name, "p99")
        errors = sum(r.errors for r in runs[name])
        print(f"| {name} | {median(name, 'rps'):.0f} | {median(name, 'p50'):.1f} | {p99:.1f} | {p99 / rr:.2f} | "
              f"{p99 / lr:.2f} | {median(name, 'slow_share'):.1%} | {errors} |")


if __name__ == "__main__":
    main()

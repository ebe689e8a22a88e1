"""Priority shedding under overload: one classifier replica slowed to a known capacity
(`--fault-batch-delay-ms`), offered about 3x that capacity, half of it at priority -1 and half at
priority 0, through one edge Envoy; the same load against a Backend without shedding, in turns.

Capacity is measured first (closed loop, no pause, priority 0, no shedding). Then `--callers`
callers pace themselves to `--overload` times capacity in all, half of them sending
`x-sluice-priority: -1`. Reported per priority and configuration: requests, 429s, other errors,
p50 and p99 of the answered (200) requests; medians over `--rounds` interleaved rounds.

  .venv/bin/python bench/shed_bench.py [--duration 5] [--rounds 3] [--overload 3]

On a shared 2-core machine, read the shed counts and the latency ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from edge import ROOT, edge, paced, replicas, routed_by_header  # puts tests/ on sys.path
from load import BODY

PRIORITIES = ("-1", "0")


@dataclass
class Outcome:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


async def drive(url: str, config: str, callers: int, seconds: float, rate: float | None) -> dict[str, Outcome]:
    """Half the callers at priority -1, half at 0."""
    out = {p: Outcome() for p in PRIORITIES}
    connector = aiohttp.TCPConnector(limit=callers)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def send(caller: int) -> None:
            priority = PRIORITIES[caller % 2]
            headers = {"Content-Type": "application/json", "x-config": config, "x-sluice-priority": priority}
            began = time.monotonic()
            try:
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = 0
            out[priority].statuses[status] += 1
            if status == 200:
                out[priority].latencies.append(time.monotonic() - began)

        await paced(callers, seconds, rate, send)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--overload", type=float, default=3.0)
    parser.add_argument("--batch-delay-ms", type=float, default=25.0)
    parser.add_argument("--threshold", type=int, default=8)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="shed-bench-") as tmp:
        workdir = Path(tmp)
        slow = [("--fault-batch-delay-ms", str(args.batch_delay_ms))]
        with replicas(workdir, args.model_repository, "classifier:1", slow) as (backend,):
            endpoints: list[dict[str, object]] = [{"address": "127.0.0.1", "port": backend.port}]
            configs: dict[str, dict[str, object]] = {
                "plain": {}, "shedding": {"shedding": {"queue_threshold": args.threshold, "retry_after_s": 1}}}
            with edge(workdir, routed_by_header("x-config", configs, endpoints), "edge-shed-bench") as envoy:
                url = f"{envoy.url}/v2/models/classifier/infer"
                measured = asyncio.run(drive(url, "plain", args.callers, args.duration, None))
                capacity = sum(o.statuses[200] for o in measured.values()) / args.duration
                rate = capacity * args.overload
                print(f"capacity (no pause, {args.callers} callers): {capacity:.0f} req/s; offered {rate:.0f} req/s "
                      f"({args.overload:g}x), half at priority -1", flush=True)
                runs: dict[str, list[dict[str, Outcome]]] = {name: [] for name in configs}
                for round_number in range(args.rounds):
                    for name in configs:
                        run = asyncio.run(drive(url, name, args.callers, args.duration, rate))
                        runs[name].append(run)
                        print(f"round {round_number + 1} {name:9} " + "  ".join(
                            f"p{p}: {sum(o.statuses.values())} sent, {o.statuses[429]} shed, p99 {o.p(99):.0f} ms"
                            for p, o in run.items()), flush=True)
                report(runs)


def report(runs: dict[str, list[dict[str, Outcome]]]) -> None:
    print("\n| config | priority | requests | 429 | other errors | p50 ms (200s) | p99 ms (200s) |")
    print("|---|---|---|---|---|---|---|")
    for name, rounds in runs.items():
        for p in PRIORITIES:
            outcomes = [r[p] for r in rounds]
            sent = statistics.median(sum(o.statuses.values()) for o in outcomes)
            shed = statistics.median(o.statuses[429] for o in outcomes)
            other = statistics.median(sum(n for s, n in o.statuses.items() if s not in (200, 429)) for o in outcomes)
            p50 = statistics.median(o.p(50) for o in outcomes)
            p99 = statistics.median(o.p(99) for o in outcomes)
            print(f"| {name} | {p} | {sent:.0f} | {shed:.0f} | {other:.0f} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()

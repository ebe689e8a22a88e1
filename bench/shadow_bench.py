"""What shadowing costs the users: client-visible latency through the edge Envoy with the
canary's shadow stage mirroring 100% of the route to the comparator, against the same run
without shadowing, in interleaved rounds.

  .venv/bin/python bench/shadow_bench.py [--rate 100] [--duration 8] [--rounds 3] [--percent 100] [--split] [--model-ms 0]

The load is open loop at `--rate` requests/s (each request starts on schedule, whether or not
earlier ones finished), so both configurations see the same offered load; latencies are
measured from the scheduled start. A shadow round applies a fresh Canary (shadow stage, windows
too long to decide) and aborts it afterwards, which removes the mirror: the next plain round
runs on the same processes. The comparator, the backends, Envoy and this client share the
machine's cores, so the shadow rounds include the comparator's and the doubled stable load's
CPU: the figure is what users would see on one box, an upper bound for a deployment where the
comparator runs elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import PYTHON, Backend, ControlPlane, Envoy, get_json, http, wait_until  # noqa: E402
from test_e2e_shadow_canary import BODIES, policy  # noqa: E402 - the tests' traffic and policy


async def measure(url: str, rate: float, duration_s: float) -> tuple[list[float], int]:
    """Latencies (ms) of `rate` x `duration_s` requests started on schedule; and the errors."""
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        async def one(i: int, at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            try:
                async with session.post(url, data=BODIES[i % len(BODIES)],
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(1000 * (time.perf_counter() - at))

        start = time.perf_counter() + 0.1
        await asyncio.gather(*(one(i, start + i / rate) for i in range(int(rate * duration_s))))
    return latencies, errors


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per round and configuration")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--percent", type=float, default=100.0, help="share of the route mirrored")
    parser.add_argument("--model-ms", type=float, default=0.0,
                        help="time each backend spends per request off the CPU (--fault-delay-ms), as a GPU-bound "
                        "model would: the figure then shows the mirroring itself rather than two cores' contention")
    parser.add_argument("--split", action="store_true", help="this client, Envoy and the stable backend on core 0; "
                        "the control plane (comparator) and the candidate on core 1, as when they run elsewhere")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    models = work / "models"
    subprocess.run([PYTHON, "-m", "inference.gen_models", "--out", str(models), "--canary-candidates"],
                   check=True, cwd=ROOT, capture_output=True)
    delay = ("--fault-delay-ms", str(args.model_ms)) if args.model_ms else ()
    stable = Backend.start(work, models, "classifier:1", *delay)
    candidate = Backend.start(work, models, "classifier:4", *delay)
    cp = ControlPlane.start(work)
    envoy = Envoy.start(work, cp)
    results: dict[str, list[tuple[float, float, int, int]]] = {"plain": [], f"shadow {args.percent:g}%": []}
    if args.split:
        for core, procs in (("0", (envoy.proc, stable.proc)), ("1", (cp.proc, candidate.proc))):
            for proc in procs:
                subprocess.run(["taskset", "-a", "-p", "-c", core, str(proc.pid)], check=True, capture_output=True)
        os.sched_setaffinity(0, {0})
    try:
        assert cp.apply(*policy(stable.port, candidate.port))[0] == 200
        cp.wait_converged(envoy.node_id)
        url = f"{envoy.url}/v2/models/classifier/infer"
        asyncio.run(measure(url, args.rate, 2.0))  # warm-up
        for round_ in range(args.rounds):
            for config in results:
                name = f"bench-{round_}"
                if config != "plain":
                    code, body = cp.apply({"kind": "Canary", "name": name, "spec": {
                        "service": "classifier", "route": "infer", "stable": "stable", "canary": "candidate",
                        "steps": [100], "interval_s": 3600,
                        "shadow": {"percent": args.percent, "windows": 1, "min_comparisons": 1}}})
                    assert code == 200, body
                    status_url = f"{cp.url}/api/v1/canaries/{name}/status"
                    wait_until(lambda url=status_url: get_json(url)["status"]["stage"] == "shadow", 10,
                               what="the shadow stage")
                    cp.wait_converged(envoy.node_id)
                latencies, errors = asyncio.run(measure(url, args.rate, args.duration))
                compared = 0
                if config != "plain":
                    shadow = get_json(f"{cp.url}/api/v1/canaries/{name}/status")["window"]["shadow"]
                    compared = shadow["compared"]
                    assert http("POST", f"{cp.url}/api/v1/canaries/{name}/abort", {})[0] == 200
                    cp.wait_converged(envoy.node_id, timeout=10)
                results[config].append((p(latencies, 50), p(latencies, 99), errors, compared))
                print(f"round {round_ + 1} {config:<12} p50 {p(latencies, 50):6.2f} ms  p99 {p(latencies, 99):6.2f} ms"
                      f"  errors {errors}  compared {compared}", flush=True)
    finally:
        for proc in (envoy.proc, cp.proc, candidate.proc, stable.proc):
            proc.stop()
    base99 = statistics.median(r[1] for r in results["plain"])
    print(f"\n{args.rate:g} req/s open loop, {args.duration:g} s x {args.rounds} interleaved rounds, medians"
          f"{', split over cores' if args.split else ''}"
          f"{f', {args.model_ms:g} ms per request off the CPU' if args.model_ms else ''}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("| configuration | p50 ms | p99 ms | p99 vs plain | errors | compared |")
    print("|---|---|---|---|---|---|")
    for config, rows in results.items():
        p50 = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        print(f"| {config} | {p50:.2f} | {p99:.2f} | {p99 / base99:.3f}x | {sum(r[2] for r in rows)} | "
              f"{sum(r[3] for r in rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

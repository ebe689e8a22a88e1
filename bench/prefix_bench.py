"""Prefix affinity: four generative replicas (tiny-llama, prefix caching on) behind one edge
Envoy; chat requests whose system prompts follow a Zipf law over 50 prompts; round_robin,
least_request, load_aware and least_loaded with prefix affinity (the picker filter hashes the
first bytes of the body's messages), interleaved on the same replicas in the same run.

Each replica's KV cache is cut to `--kv-cache-mb` (default 5 MB: 640 blocks of 16 tokens, about
a quarter of the 50 prompts' ~2,300 blocks at the default `--prompt-words 200`, ~730 tokens each),
as a production model's cache holds a share of a large prompt set; with the default 32 MB every
replica ends up holding every prompt and affinity has little to add. Affinity matters most where
one replica's cache holds a small share of the prompts in use and the fleet's holds most of them:
`--kv-cache-mb 2.5 --model-capacity 5 --zipf-s 0.7 --warmup 240` (docs/load-balancing.md). `--model-capacity`
is the prompts one cache holds, for the LRU model below and the picker's `cached_prefixes`.
Prompts are long so that prefill is most of a request's time to first token. Each candidate, each
round, draws 50 fresh system prompts (seeded random words), so no candidate is helped by what
another left in the caches. `--concurrency` callers send `--requests` streamed chat completions (a short random user
turn, `--max-tokens` tokens out, ignore_eos) in a closed loop. Reported per candidate (medians
over `--rounds` rounds): the prefix-cache hit rate (prompt tokens found in the cache over those
looked up, from every replica's vllm:prefix_cache_* counters), max/mean requests per replica
(Envoy's per-host counters), max/mean prefill work (prompt tokens each replica computed, not
found in its cache), TTFT p50 and p99 (client side: the first content chunk). `--zipf-s` sets the
law's exponent (1.1 by default; web request logs fit 0.64-0.83, Breslau et al., INFOCOM 1999).
`--warmup N` first sends N requests drawn from the same law over the same prompts, unmeasured, so
that the measured requests meet caches in steady state, as a fleet serving system prompts does,
rather than paying each prompt's compulsory first misses; the counters, per-host counts and TTFT
cover only the measured `--requests` (errors count both). Last, the same request orders (warm-up
included, not counted) run through a model of whole prompts in LRU caches of `--model-capacity`
prompts: spread over the replicas as least_request does, and partitioned (each prompt at one home,
whatever the load). It is a yardstick, not a bound: the engine evicts a prompt's last blocks
first, so a prompt partly evicted still hits on its first ones, and it holds more prompts while
no request is in flight. `--candidates` measures a subset (least-request is
always among them: the ratios are to it).

  .venv/bin/python bench/prefix_bench.py [--requests 240] [--rounds 2] [--concurrency 8]
  .venv/bin/python bench/prefix_bench.py --rounds 3 --zipf-s 0.7 --kv-cache-mb 2.5 --model-capacity 5 --warmup 240 [--concurrency 16]

On a shared 2-core machine four replicas, Envoy and the client share the cores: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import yaml
from edge import ROOT, edge, replicas, routed_by_header  # puts tests/ on sys.path
from harness import Backend, Envoy, http
from test_e2e_load_balancing import _sent

MODEL = "tiny-llama"
CANDIDATES: dict[str, dict[str, object]] = {
    "round-robin": {"lb_policy": "round_robin"},
    "least-request": {"lb_policy": "least_request"},
    "load-aware": {"lb_policy": "load_aware"},
}
WORDS = ("gate river stone lamp field north quiet copper window garden bridge signal paper harbor "
         "winter orchard engine meadow lantern valley thunder marble canvas pepper silver anchor").split()


@dataclass
class Run:
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    hit_rate: float = 0.0
    max_over_mean: float = 0.0
    work_max_over_mean: float = 0.0

    def p(self, q: float) -> float:
        return float(np.percentile(self.ttft, q)) * 1000 if self.ttft else float("nan")


def system_prompts(seed: int, words: int, count: int = 50) -> list[str]:
    rng = random.Random(seed)
    return [f"You are assistant {i}. " + " ".join(rng.choice(WORDS) for _ in range(words)) for i in range(count)]


def zipf_choices(seed: int, n: int, count: int, s: float) -> list[int]:
    weights = [1 / (k + 1) ** s for k in range(count)]
    return random.Random(seed).choices(range(count), weights=weights, k=n)


async def drive(url: str, candidate: str, prompts: list[str], order: list[tuple[int, int]], callers: int,
                max_tokens: int) -> Run:
    """Send `order`'s (request number, prompt) pairs; the number keeps user turns apart across the
    warm-up and the measured part."""
    run = Run()
    queue = list(order)
    rng = random.Random(len(order) + order[0][0])

    async def caller(session: aiohttp.ClientSession) -> None:
        while queue:
            n, which = queue.pop()
            body = {"model": MODEL, "stream": True, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
                    "messages": [{"role": "system", "content": prompts[which]},
                                 {"role": "user", "content": f"Question {n}: {rng.choice(WORDS)} {rng.choice(WORDS)}?"}]}
            began = time.monotonic()
            first = None
            try:
                async with session.post(url, json=body, headers={"x-candidate": candidate}) as response:
                    if response.status != 200:
                        run.errors += 1
                        await response.read()
                        continue
                    async for line in response.content:
                        if first is None and line.startswith(b"data: {") and b'"content"' in line:
                            first = time.monotonic() - began
            except aiohttp.ClientError:
                run.errors += 1
                continue
            if first is not None:
                run.ttft.append(first)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(caller(session) for _ in range(callers)))
    return run


def lru_model(order: list[int], replicas: int, capacity: int, seed: int, warmup: int) -> tuple[float, float]:
    """Hit rates of a model of whole prompts in LRU caches of `capacity` prompts per replica: spread
    (each request to the next replica, as least_request does with prefixes) and partitioned (each
    prompt always to one home, never spilling: the best affinity can do). The first `warmup`
    requests fill the caches and are not counted."""
    rng = random.Random(seed)
    home = [rng.randrange(replicas) for _ in range(max(order) + 1)]

    def hit_rate(route: Callable[[int, int], int]) -> float:
        caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(replicas)]
        hits = 0
        for n, prompt in enumerate(order):
            cache = caches[route(n, prompt)]
            if prompt in cache:
                hits += n >= warmup
                cache.move_to_end(prompt)
            else:
                cache[prompt] = None
                if len(cache) > capacity:
                    cache.popitem(last=False)
        return hits / (len(order) - warmup)

    return hit_rate(lambda n, _: n % replicas), hit_rate(lambda _, prompt: home[prompt])


def cache_counters(backends: list[Backend]) -> list[tuple[float, float]]:
    """Per replica: prompt tokens found in its prefix cache, and looked up."""
    counters = []
    for b in backends:
        hits = queries = 0.0
        for line in http("GET", f"{b.url}/metrics")[2].decode().splitlines():
            if line.startswith("vllm:prefix_cache_hits_total{"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total{"):
                queries += float(line.rsplit(" ", 1)[1])
        counters.append((hits, queries))
    return counters


def max_over_mean(values: list[float]) -> float:
    return max(values) / (sum(values) / len(values)) if sum(values) else float("nan")


def measure(envoy: Envoy, backends: list[Backend], candidate: str, seed: int, args: argparse.Namespace) -> Run:
    prompts = system_prompts(seed, args.prompt_words)
    order = list(enumerate(zipf_choices(seed, args.warmup + args.requests, len(prompts), args.zipf_s)))
    url = f"{envoy.url}/v1/chat/completions"
    warmup_errors = 0
    if args.warmup:
        warmup_errors = asyncio.run(drive(url, candidate, prompts, order[:args.warmup], args.concurrency, args.max_tokens)).errors
    before = cache_counters(backends)
    sent0 = _sent(envoy, candidate)
    run = asyncio.run(drive(url, candidate, prompts, order[args.warmup:], args.concurrency, args.max_tokens))
    run.errors += warmup_errors
    after = cache_counters(backends)
    hits = [h1 - h0 for (h0, _), (h1, _) in zip(before, after, strict=True)]
    queries = [q1 - q0 for (_, q0), (_, q1) in zip(before, after, strict=True)]
    run.hit_rate = sum(hits) / max(1.0, sum(queries))
    run.max_over_mean = max_over_mean([n - sent0.get(host, 0) for host, n in _sent(envoy, candidate).items()])
    # Prefill work: prompt tokens each replica computed (not found in its cache).
    run.work_max_over_mean = max_over_mean([q - h for h, q in zip(hits, queries, strict=True)])
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=240, help="measured requests per candidate and round")
    parser.add_argument("--warmup", type=int, default=0,
                        help="unmeasured requests per candidate and round before the measured ones (same law, same prompts)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--prompt-words", type=int, default=200)
    parser.add_argument("--model-capacity", type=int, default=12,
                        help="prompts one replica's cache holds (5 MB: ~12 of ~730 tokens), for the LRU model and "
                             "prefix affinity's cached_prefixes")
    parser.add_argument("--load-bound", type=float, default=1.25, help="prefix affinity's load bound")
    parser.add_argument("--zipf-s", type=float, default=1.1, help="the Zipf law's exponent over the 50 prompts")
    parser.add_argument("--kv-cache-mb", type=float, default=5.0)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--candidates", nargs="+", choices=[*CANDIDATES, "prefix-affinity"],
                        help="measure only these (least-request, the baseline, always included)")
    args = parser.parse_args()
    if args.requests < 1 or args.warmup < 0:
        parser.error("--requests must be at least 1 and --warmup at least 0")

    with tempfile.TemporaryDirectory(prefix="prefix-bench-") as tmp:
        workdir = Path(tmp)
        repository = workdir / "models"
        shutil.copytree(args.model_repository / MODEL, repository / MODEL)
        config = yaml.safe_load((repository / MODEL / "config.yaml").read_text())
        (repository / MODEL / "config.yaml").write_text(yaml.safe_dump({**config, "kv_cache_mb": args.kv_cache_mb}))
        with replicas(workdir, repository, MODEL, [()] * 4) as backends:
            endpoints: list[dict[str, object]] = [{"address": "127.0.0.1", "port": b.port} for b in backends]
            candidates = {**CANDIDATES, "prefix-affinity": {
                "lb_policy": "least_loaded", "prefix_affinity": {
                "prefix_bytes": 256, "load_bound": args.load_bound, "cached_prefixes": args.model_capacity}}}
            measured = [name for name in candidates if not args.candidates or name in {*args.candidates, "least-request"}]
            with edge(workdir, routed_by_header("x-candidate", candidates, endpoints), "edge-prefix-bench") as envoy:
                runs: dict[str, list[Run]] = {name: [] for name in measured}
                for round_number in range(args.rounds):
                    for index, name in enumerate(candidates):
                        if name not in runs:
                            continue
                        run = measure(envoy, backends, name, seed=1000 * round_number + index, args=args)
                        runs[name].append(run)
                        print(f"round {round_number + 1} {name:16} hit rate {run.hit_rate:5.1%} max/mean {run.max_over_mean:4.2f} "
                              f"prefill work max/mean {run.work_max_over_mean:4.2f} "
                              f"TTFT p50 {run.p(50):6.1f} ms p99 {run.p(99):6.1f} ms errors {run.errors}", flush=True)
                report(runs)
                models = [lru_model(zipf_choices(1000 * r, args.warmup + args.requests, 50, args.zipf_s), 4,
                                    args.model_capacity, r, args.warmup) for r in range(args.rounds)]
                spread, partitioned = (statistics.median(m[i] for m in models) for i in (0, 1))
                print(f"\nLRU model, {args.model_capacity} prompts per replica, {args.warmup} warm-up requests: "
                      f"spread {spread:.1%}, partitioned "
                      f"{partitioned:.1%}, {partitioned / spread:.2f}x (whole prompts only: the engine also hits on the "
                      f"first blocks of a prompt whose last ones it evicted, and holds more prompts while idle)")


def report(runs: dict[str, list[Run]]) -> None:
    base = runs["least-request"]
    base_hit = statistics.median(r.hit_rate for r in base)
    base_p50 = statistics.median(r.p(50) for r in base)
    print("\n| candidate | prefix-cache hit rate | vs least_request | max/mean requests per replica "
          "| max/mean prefill work | TTFT p50 ms | vs least_request | TTFT p99 ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        hit = statistics.median(r.hit_rate for r in rs)
        p50 = statistics.median(r.p(50) for r in rs)
        print(f"| {name} | {hit:.1%} | {hit / max(base_hit, 1e-9):.2f}x | {statistics.median(r.max_over_mean for r in rs):.2f} | "
              f"{statistics.median(r.work_max_over_mean for r in rs):.2f} | "
              f"{p50:.1f} | {p50 / base_p50:.2f}x | {statistics.median(r.p(99) for r in rs):.1f} | {sum(r.errors for r in rs)} |")


if __name__ == "__main__":
    main()

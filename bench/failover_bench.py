"""Failover figures behind the issue's goals, through one edge Envoy and real classifier replicas:

  first byte   a replica that hangs 5 s before its headers and a healthy one, round robin,
               per_try_timeout 0.2 s: the slowest answer against 200 ms + the healthy replica's
               own p99 (measured through the same Envoy on a route to it alone) + 50 ms
  cooldown     a replica answering every request 429 with Retry-After: 5 and a healthy one,
               least_loaded (the picker), 429 retried elsewhere: the gaps between tries that reach
               the throttled replica (goal 5 +- 0.5 s), and the client's statuses
  budget       two replicas, one failing every request (half the tries fail), retries on 5xx, with
               and without a retry budget {10%, min 1}: upstream tries per client request (goal <= 1.2)
  mid-stream   two generative replicas (a token every 50 ms) behind a Model on a route that retries
               resets, 5xx and connect failures; each round streams a greedy completion, kills the
               replica serving it after 1..10 events and restarts it: bytes of answer text the client
               got twice (against the same completion read from a replica directly), whether the
               stream ended with the edge's error event and [DONE] as a complete HTTP message, the
               time from the kill to that end, upstream retries, and requests the other replica saw.
               Then the same on a route without a Model, where the streams stay chunked (as vLLM's)

  .venv/bin/python bench/failover_bench.py [--requests 40] [--cooldown-s 16] [--streams 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from http.client import HTTPConnection, IncompleteRead
from pathlib import Path

import numpy as np
from edge import ROOT, edge, replicas  # puts tests/ on sys.path
from harness import Backend, Envoy
from load import BODY
from test_e2e_failover import ENDED, _events, _metric, _requests, _stat, _stream_policy, _text
from test_e2e_load_balancing import _sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--cooldown-s", type=float, default=16.0, help="how long to watch the throttled replica")
    parser.add_argument("--streams", type=int, default=8, help="mid-stream rounds (replicas killed)")
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
        # A control plane of its own (the first one's store in workdir holds the classifier policy).
        workdir = workdir / "stream"
        workdir.mkdir()
        with replicas(workdir, args.model_repository, "tiny-llama", [("--fault-step-delay-ms", "50")] * 2) as generators:
            with edge(workdir, _stream_policy(generators), "edge-failover-stream-bench") as envoy:
                mid_stream(envoy, generators, args.streams)


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



def mid_stream(envoy: Envoy, generators: list[Backend], rounds: int) -> None:
    request = {"model": "tiny-llama", "prompt": "The gate", "max_tokens": 40, "temperature": 0, "ignore_eos": True, "stream": True}
    reference = HTTPConnection("127.0.0.1", generators[0].port, timeout=30)
    reference.request("POST", "/v1/completions", json.dumps(request), {"Content-Type": "application/json"})
    whole = _text(_events(reference.getresponse().read())[:-1])
    reference.close()
    # The Model's route (the llm filter asks for close-delimited streams and ends a cut one), and
    # the same replicas on a route without a Model: chunked streams, as from vLLM.
    for label, headers in (("edge-ended", {}), ("chunked", {"x-route": "chunked"})):
        duplicated, clean, cut, ends_ms, others = [], 0, 0, [], 0
        retries = _stat(envoy, "cluster.llm.upstream_rq_retry")
        for round_ in range(rounds):
            after = 1 + round_ % 10
            seen = [_metric(b, "vllm:prompt_tokens_total") for b in generators]
            conn = HTTPConnection("127.0.0.1", envoy.listen_port, timeout=10)
            conn.request("POST", "/v1/completions", json.dumps(request), {"Content-Type": "application/json", **headers})
            response = conn.getresponse()
            received, killed, complete = b"", None, True
            try:
                while chunk := response.read1(65536):
                    received += chunk
                    if killed is None and received.count(b"data: ") >= after:
                        killed = next(b for b in generators if _metric(b, "vllm:num_requests_running") == 1)
                        killed_at = time.monotonic()
                        killed.proc.kill()
            except IncompleteRead:
                complete = False
            ends_ms.append((time.monotonic() - killed_at) * 1000)
            conn.close()
            assert killed is not None, "the stream ended before the kill"
            events = _events(received)
            ended = complete and len(events) >= 2 and ENDED in events[-2] and events[-1] == b"[DONE]"
            text = _text(events[:-2] if ended else events)
            common = next((i for i, (a, b) in enumerate(zip(text, whole, strict=False)) if a != b), min(len(text), len(whole)))
            duplicated.append(len(text.encode()) - len(text[:common].encode()))
            clean += ended
            cut += not complete
            survivor = next(b for b in generators if b is not killed)
            others += _metric(survivor, "vllm:prompt_tokens_total") != seen[generators.index(survivor)]
            killed.restart()
        print(f"mid-stream, {label}: {rounds} streams, the serving replica killed after 1..{min(rounds, 10)} events: "
              f"duplicated bytes {sum(duplicated)}, ended by the error event + [DONE] in a complete response {clean}/{rounds}, "
              f"cut at the HTTP level {cut}/{rounds}, other replica saw the request {others}/{rounds}, "
              f"kill to end p50 {statistics.median(ends_ms):.1f} ms, max {max(ends_ms):.1f} ms, "
              f"upstream retries {_stat(envoy, 'cluster.llm.upstream_rq_retry') - retries}")

if __name__ == "__main__":
    main()

"""Data-plane cost of sluice's ratelimit wasm filter, measured with wrk through Envoy.

Five Envoys (--concurrency 1, direct response, same listener and routes) run side by side:

  none        no HTTP filter but the router
  native      envoy.filters.http.local_ratelimit, enabled and enforced 100%, bucket never empty
  empty-wasm  a proxy-wasm filter with the same two callbacks as ours reading one header: the
              ceiling for any wasm filter (bench/empty_filter.zig)
  ours        ratelimit.wasm, a client-IP policy (X-Forwarded-For, 1 trusted hop) never hit
  ours-half   the same filter and configuration, every second request on a route whose policy
              is exhausted: ~half the traffic answered 429 by the filter

wrk -t1 -c16 runs against each in turn, ROUNDS times interleaved, and the median of the rounds is
reported: requests/s, p50, p99, Envoy's CPU time per request (read from /proc: far less sensitive
than requests/s and p99 to other load on a shared machine), and ours against native and against
empty-wasm.

  .venv/bin/python bench/ratelimit_bench.py [--duration 5] [--rounds 3] [--pin]

Needs wrk (`apt-get install -y wrk`) and the built filter (`make filters`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import envoy_wrk
from envoy_wrk import bootstrap, free_port, wasm_filter

ROOT = Path(__file__).resolve().parents[1]
RATELIMIT_WASM = ROOT / "build" / "filters" / "bin" / "ratelimit.wasm"
CALLBACKS = ["proxy_on_request_headers", "proxy_on_response_headers"]  # ours', for the empty filter

XFF = "192.0.2.10"  # as the trusted load balancer would send it
PLUGIN_CONFIG = {
    "xff_trusted_hops": 1,
    "policies": [
        {"name": "free", "routes": ["free"], "rate": 1e9, "burst": 1_000_000_000, "key": [{"type": "client_ip"}]},
        {"name": "strict", "routes": ["limited"], "rate": 1.0, "burst": 1, "key": [{"type": "client_ip"}]},
    ],
}
ROUTES = [("limited", "/limited"), ("free", "/")]
HALF_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then return wrk.format("GET", "/limited") end
  return wrk.format("GET", "/")
end
"""

NATIVE = {
    "name": "envoy.filters.http.local_ratelimit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench",
        "token_bucket": {"max_tokens": 1_000_000_000, "tokens_per_fill": 1_000_000_000, "fill_interval": "1s"},
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                           "runtime_key": "bench_enabled"},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
                            "runtime_key": "bench_enforced"},
    },
}


def main() -> int:
    args = envoy_wrk.parse_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    if not envoy_wrk.ready_to_run(RATELIMIT_WASM):
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="ratelimit-bench-"))
    empty = envoy_wrk.build_empty_filter(workdir, CALLBACKS)
    ours = wasm_filter(RATELIMIT_WASM, json.dumps(PLUGIN_CONFIG), vm_id="sluice_ratelimit", name="sluice_ratelimit")
    half_script = workdir / "half.lua"
    half_script.write_text(HALF_SCRIPT)
    # name -> (filters, wrk script)
    cases = {
        "none": ([], None),
        "native": ([NATIVE], None),
        "empty-wasm": ([wasm_filter(empty, "", vm_id="empty", name="empty")], None),
        "ours": ([ours], None),
        "ours-half": ([ours], half_script),
    }
    envoys = {name: envoy_wrk.bench_envoy(workdir, name, bootstrap(free_port(), free_port(), filters, routes=ROUTES))
              for name, (filters, _) in cases.items()}
    with envoy_wrk.running(envoys, ready_timeout=30):
        median = envoy_wrk.measure(envoys, {name: script for name, (_, script) in cases.items()},
                                   duration=args.duration, rounds=args.rounds, headers=[f"X-Forwarded-For: {XFF}"])

    title = f"wrk -t1 -c16, Envoy --concurrency 1, direct response; {envoy_wrk.runs_note(args.rounds, args.duration)}"
    envoy_wrk.report(title, median, f"{'429 share':>9}", lambda _, m: f"{m['limited_share']:>9.0%}", [
        ("ours / native", "ours", "native", "(goal >= 0.9x throughput, < 100us added p99)"),
        ("ours / empty-wasm", "ours", "empty-wasm", "(the limiter's own logic beyond the wasm ceiling)"),
        ("empty-wasm / native", "empty-wasm", "native", "(the ceiling of any wasm filter)"),
        ("ours-half / native", "ours-half", "native", f"({median['ours-half']['limited_share']:.0%} answered 429)"),
    ])
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

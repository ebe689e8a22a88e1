"""Data-plane cost of sluice's ratelimit wasm filter, measured with wrk through Envoy.

Five Envoys (--concurrency 1, direct response, same listener and routes) run side by side:

  none        no HTTP filter but the router
  native      envoy.filters.http.local_ratelimit, enabled and enforced 100%, bucket never empty
  empty-wasm  a proxy-wasm filter with the same two callbacks as ours reading one header: the
              ceiling for any wasm filter (bench/ratelimit_empty_filter.zig)
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
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENVOY = ROOT / ".venv" / "bin" / "envoy"
RATELIMIT_WASM = ROOT / "build" / "filters" / "bin" / "ratelimit.wasm"
EMPTY_SOURCE = ROOT / "bench" / "ratelimit_empty_filter.zig"

XFF = "192.0.2.10"  # as the trusted load balancer would send it
PLUGIN_CONFIG = {
    "xff_trusted_hops": 1,
    "policies": [
        {"name": "free", "routes": ["free"], "rate": 1e9, "burst": 1_000_000_000, "key": [{"type": "client_ip"}]},
        {"name": "strict", "routes": ["limited"], "rate": 1.0, "burst": 1, "key": [{"type": "client_ip"}]},
    ],
}
HALF_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then return wrk.format("GET", "/limited") end
  return wrk.format("GET", "/")
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_filter(path: Path, configuration: str, name: str) -> dict:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name, "root_id": name,
                "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": str(path)}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": configuration},
            },
        },
    }


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


def bootstrap(port: int, admin: int, http_filters: list[dict]) -> dict:
    def route(name: str, prefix: str) -> dict:
        return {"name": name, "match": {"prefix": prefix},
                "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}

    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "bench",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network."
                             "http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench",
                    "use_remote_address": True,
                    "route_config": {"name": "bench", "virtual_hosts": [{
                        "name": "all", "domains": ["*"],
                        "routes": [route("limited", "/limited"), route("free", "/")],
                    }]},
                    "http_filters": http_filters + [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                    }],
                },
            }]}],
        }]},
    }


class Envoy:
    def __init__(self, name: str, workdir: Path, http_filters: list[dict]):
        self.name = name
        self.port, self.admin = free_port(), free_port()
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(json.dumps(bootstrap(self.port, self.admin, http_filters), indent=1))
        self.log = open(workdir / f"{name}.log", "wb")
        self.process = subprocess.Popen(
            PIN_ENVOY + [str(ENVOY), "-c", str(self.config), "--concurrency", "1", "--disable-hot-restart",
                         "--log-level", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy {self.name} exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"envoy {self.name} not ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}

# --pin with 2+ cores: Envoy on core 0, wrk on core 1; set by main().
PIN_ENVOY: list[str] = []
PIN_WRK: list[str] = []


def parse_wrk(output: str) -> dict:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))

    def percentile(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        return float(m.group(1)) * UNITS[m.group(2)]

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    total = int(re.search(r"(\d+) requests in", output).group(1))
    return {"rps": rps, "p50": percentile("50"), "p99": percentile("99"), "requests": total,
            "limited_share": (int(non2xx.group(1)) if non2xx else 0) / max(total, 1)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(envoy: Envoy, duration: float, script: Path | None) -> dict:
    cmd = PIN_WRK + ["wrk", "-t1", "-c16", f"-d{int(duration)}s", "--latency", "-H", f"X-Forwarded-For: {XFF}"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(f"http://127.0.0.1:{envoy.port}/")
    cpu_before = cpu_seconds(envoy.process.pid)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    cpu_used = cpu_seconds(envoy.process.pid) - cpu_before
    result = parse_wrk(out)
    # Envoy's CPU time per request: less sensitive than requests/s to other load on the machine.
    result["cpu_us"] = cpu_used / max(result["requests"], 1) * 1e6
    return result


def build_empty_filter(workdir: Path) -> Path:
    out = workdir / "empty.wasm"
    subprocess.run([sys.executable, "-m", "ziglang", "build-exe", str(EMPTY_SOURCE), "-target", "wasm32-wasi",
                    "-O", "ReleaseSafe", "-fno-entry", "-rdynamic", "-fstrip", f"-femit-bin={out}"],
                   check=True, cwd=workdir)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--pin", action="store_true",
                        help="pin Envoy to core 0 and wrk to core 1 (helps on an otherwise idle machine)")
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if not RATELIMIT_WASM.is_file():
        print(f"{RATELIMIT_WASM} is missing: run `make filters`", file=sys.stderr)
        return 2

    if args.pin and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        PIN_ENVOY[:] = ["taskset", "-c", "0"]
        PIN_WRK[:] = ["taskset", "-c", "1"]
    workdir = Path(tempfile.mkdtemp(prefix="ratelimit-bench-"))
    empty = build_empty_filter(workdir)
    ours_config = json.dumps(PLUGIN_CONFIG)
    half_script = workdir / "half.lua"
    half_script.write_text(HALF_SCRIPT)
    # name -> (filters, wrk script)
    cases = {
        "none": ([], None),
        "native": ([NATIVE], None),
        "empty-wasm": ([wasm_filter(empty, "", "empty")], None),
        "ours": ([wasm_filter(RATELIMIT_WASM, ours_config, "sluice_ratelimit")], None),
        "ours-half": ([wasm_filter(RATELIMIT_WASM, ours_config, "sluice_ratelimit")], half_script),
    }
    envoys = {name: Envoy(name, workdir, filters) for name, (filters, _) in cases.items()}
    results: dict[str, list[dict]] = {name: [] for name in cases}
    try:
        for envoy in envoys.values():
            envoy.wait_ready()
        for name, envoy in envoys.items():  # warm-up (VM start, connection pools, caches)
            run_wrk(envoy, 1, cases[name][1])
        for round_ in range(args.rounds):
            for name, envoy in envoys.items():
                results[name].append(run_wrk(envoy, args.duration, cases[name][1]))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for envoy in envoys.values():
            envoy.stop()

    median = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}
    print(f"wrk -t1 -c16, Envoy --concurrency 1, direct response; median of {args.rounds} interleaved "
          f"{args.duration:g}s runs{'; Envoy pinned to core 0, wrk to core 1' if PIN_ENVOY else ''}")
    print(f"{'config':<12} {'requests/s':>11} {'p50':>9} {'p99':>9} {'Envoy CPU/req':>14} {'429 share':>9}")
    for name, m in median.items():
        print(f"{name:<12} {m['rps']:>11.0f} {m['p50'] * 1e6:>7.0f}us {m['p99'] * 1e6:>7.0f}us "
              f"{m['cpu_us']:>12.1f}us {m['limited_share']:>9.0%}")
    ours, native, empty_m = median["ours"], median["native"], median["empty-wasm"]

    def compare(label: str, a: dict, b: dict, note: str) -> None:
        print(f"{label:<20} throughput {a['rps'] / b['rps']:.2f}x   added p99 {(a['p99'] - b['p99']) * 1e6:+5.0f}us   "
              f"CPU/req {a['cpu_us'] / b['cpu_us']:.2f}x ({a['cpu_us'] - b['cpu_us']:+.1f}us)   {note}")

    print()
    compare("ours / native", ours, native, "(goal >= 0.9x throughput, < 100us added p99)")
    compare("ours / empty-wasm", ours, empty_m, "(the limiter's own logic beyond the wasm ceiling)")
    compare("empty-wasm / native", empty_m, native, "(the ceiling of any wasm filter)")
    half = median["ours-half"]
    compare("ours-half / native", half, native, f"({half['limited_share']:.0%} answered 429)")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the filter benchmarks (ratelimit_bench.py, georoute_bench.py) share: Envoys started side by
side (--concurrency 1, through tests/filters/envoy_harness.py), wrk -t1 -c16 against each in
turn, interleaved rounds and their median, the empty comparison filter (empty_filter.zig), and the
report's table and ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "filters"))

# Re-exported for the benchmarks, which build their Envoys' configurations with them.
from envoy_harness import Envoy, bootstrap, free_port, wasm_filter  # noqa: E402, F401

EMPTY_SOURCE = ROOT / "bench" / "empty_filter.zig"

# --pin with 2+ cores: Envoy on core 0, wrk on core 1; set by pin().
PIN_ENVOY: list[str] = []
PIN_WRK: list[str] = []


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The benchmark's own arguments, then --duration, --rounds and --pin (applied: see pin())."""
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--pin", action="store_true",
                        help="pin Envoy to core 0 and wrk to core 1 (helps on an otherwise idle machine)")
    args = parser.parse_args()
    pin(args.pin)
    return args


def ready_to_run(wasm: Path) -> bool:
    """wrk is installed and the filter built; else says what is missing on stderr."""
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return False
    if not wasm.is_file():
        print(f"{wasm} is missing: run `make filters`", file=sys.stderr)
        return False
    return True


def pin(enabled: bool) -> None:
    """With --pin on a machine with 2+ cores and taskset: Envoy on core 0, wrk on core 1."""
    if enabled and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        PIN_ENVOY[:] = ["taskset", "-c", "0"]
        PIN_WRK[:] = ["taskset", "-c", "1"]


def runs_note(rounds: int, duration: float) -> str:
    """How the figures were taken, for the report's first line."""
    pinned = "; Envoy pinned to core 0, wrk to core 1" if PIN_ENVOY else ""
    return f"median of {rounds} interleaved {duration:g}s runs{pinned}"


def bench_envoy(workdir: Path, name: str, config: dict | bytes, **kwargs) -> Envoy:
    """An Envoy as the benchmarks run it (not started): --concurrency 1, warnings only, pinned
    with --pin. kwargs: envoy_harness.Envoy's (the ports of a binary config, more args)."""
    return Envoy(workdir, config, name=name, concurrency=1, log_level="warn", command_prefix=PIN_ENVOY, **kwargs)


@contextmanager
def running(envoys: dict[str, Envoy], ready_timeout: float) -> Iterator[dict[str, Envoy]]:
    """Starts every Envoy, then waits until each is ready; stops them all on exit."""
    try:
        for envoy in envoys.values():
            envoy.launch()
        for envoy in envoys.values():
            envoy.wait_ready(ready_timeout)
        yield envoys
    finally:
        for envoy in envoys.values():
            envoy.stop()


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


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


def run_wrk(envoy: Envoy, duration: float, script: Path | None = None, headers: Sequence[str] = ()) -> dict:
    """One wrk run against `envoy` (optionally with a Lua script and extra request headers)."""
    cmd = PIN_WRK + ["wrk", "-t1", "-c16", f"-d{int(duration)}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(f"http://127.0.0.1:{envoy.port}/")
    assert envoy.process is not None
    cpu_before = cpu_seconds(envoy.process.pid)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    cpu_used = cpu_seconds(envoy.process.pid) - cpu_before
    result = parse_wrk(out)
    # Envoy's CPU time per request: less sensitive than requests/s to other load on the machine.
    result["cpu_us"] = cpu_used / max(result["requests"], 1) * 1e6
    return result


def measure(envoys: dict[str, Envoy], scripts: dict[str, Path | None], *, duration: float, rounds: int,
            headers: Sequence[str] = ()) -> dict[str, dict]:
    """A 1 s warm-up run per Envoy (VM start, connection pools, caches), then `rounds` rounds of a
    run per Envoy in turn; per Envoy, the median of each figure over the rounds."""
    assert rounds >= 1
    results: dict[str, list[dict]] = {name: [] for name in envoys}
    for name, envoy in envoys.items():
        run_wrk(envoy, 1, scripts[name], headers)
    for round_ in range(rounds):
        for name, envoy in envoys.items():
            results[name].append(run_wrk(envoy, duration, scripts[name], headers))
        print(f"round {round_ + 1}/{rounds} done", file=sys.stderr)
    return {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}


def build_empty_filter(workdir: Path, callbacks: Iterable[str]) -> Path:
    """empty_filter.zig exporting the proxy-wasm `callbacks` of the filter it stands in for (and
    the two exports every filter has), so it costs the same VM crossings per stream."""
    out = workdir / "empty.wasm"
    exports = ["proxy_abi_version_0_2_1", "proxy_on_memory_allocate", *callbacks]
    subprocess.run([sys.executable, "-m", "ziglang", "build-exe", str(EMPTY_SOURCE), "-target", "wasm32-wasi",
                    "-O", "ReleaseSafe", "-fno-entry", "-fstrip", *(f"--export={e}" for e in exports),
                    f"-femit-bin={out}"],
                   check=True, cwd=workdir)
    return out


def report(title: str, median: dict[str, dict], extra_header: str, extra_cells: Callable[[str, dict], str],
           comparisons: Sequence[tuple[str, str, str, str]]) -> None:
    """Prints `title`; a row per Envoy: requests/s, p50, p99, Envoy's CPU time per request, then
    the benchmark's own columns; and each comparison (label, Envoy, against Envoy, note): the
    throughput ratio, added p99, CPU per request ratio and difference."""
    print(title)
    print(f"{'config':<12} {'requests/s':>11} {'p50':>9} {'p99':>9} {'Envoy CPU/req':>14} {extra_header}")
    for name, m in median.items():
        print(f"{name:<12} {m['rps']:>11.0f} {m['p50'] * 1e6:>7.0f}us {m['p99'] * 1e6:>7.0f}us "
              f"{m['cpu_us']:>12.1f}us {extra_cells(name, m)}")
    print()
    width = 1 + max(len(label) for label, _, _, _ in comparisons)
    for label, a_name, b_name, note in comparisons:
        a, b = median[a_name], median[b_name]
        print(f"{label:<{width}} throughput {a['rps'] / b['rps']:.2f}x   "
              f"added p99 {(a['p99'] - b['p99']) * 1e6:+5.0f}us   "
              f"CPU/req {a['cpu_us'] / b['cpu_us']:.2f}x ({a['cpu_us'] - b['cpu_us']:+.1f}us)   {note}")

"""xDS at fleet scale: how fast one policy write reaches N proxies, and what each proxy costs.

    python bench/xds_scale.py                          # N = 10, 100, 1000; 1,000 routes; 10 writes each
    python bench/xds_scale.py --fleet 10,100 --writes 5 --profile cp.prof

For each N a fresh control plane runs as a subprocess (stopped by its pid) on a store holding a
1,000-route policy (100 services of 10 routes over 20 backends). The fleet is one real Envoy
plus N simulated proxies: real ADS streams over HTTP/2, one connection each, that subscribe and
ACK as Envoy does (tests/xds_client.py's logic), half state of the world and half delta, spread
over worker processes. All are in one proxy group, as a fleet of identical edges would be. The
simulated proxies share the two cores with the control plane, so they are kept cheap: each
speaks just enough HTTP/2 for its one gRPC stream (tests/xds_h2_client.py; `--client grpc`
runs grpc.aio streams instead, as this bench did before 2026-11-30), parses every response,
asks for what it names and ACKs it from its connection's reader task, and the workers keep
long-lived objects out of the garbage collector's view.

Each write changes one route's split (one service's RouteConfiguration, so every proxy gets
one RDS push); after them, one write changes every route (all 100 services in one apply).
Convergence is the time from just before the admin write until the last proxy ACKed the new
routes (for the real Envoy: until its RDS update_success counters moved), over the writes.
The control plane's own histogram (sluice_convergence_seconds: committed until the last ACK
arrived) is shown beside it. Costs come from /proc/PID: CPU seconds (utime + stime) of the
control plane and of the simulated fleet (which shares the same cores), and the control
plane's VmRSS; RSS per proxy is its growth from one connected proxy to N+1, over N.
Serialization work is counted by the control plane itself (sluice_xds_encodes_total): per
write it must not depend on N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness import ControlPlane, Envoy, http, wait_until  # noqa: E402 - the tests' process harness
from xds_client import AdsClient, Response  # noqa: E402
from xds_h2_client import H2AdsClient  # noqa: E402

from controlplane.resources import ROUTE  # noqa: E402
from sluice.client import Client, status  # noqa: E402

SERVICES, ROUTES_PER_SERVICE, BACKENDS = 100, 10, 20
TICK = os.sysconf("SC_CLK_TCK")
CLIENTS: dict[str, type[AdsClient]] = {"h2": H2AdsClient, "grpc": AdsClient}


def policy() -> list[dict[str, Any]]:
    backends = [{"kind": "Backend", "name": f"model-{b}", "spec": {"endpoints": [
        {"address": "127.0.0.1", "port": 20000 + 2 * b}, {"address": "127.0.0.1", "port": 20001 + 2 * b}]}}
        for b in range(BACKENDS)]
    return [*backends, *(service(s, 0) for s in range(SERVICES))]


def service(s: int, variant: int) -> dict[str, Any]:
    """Service s; `variant` moves the weight of its first route, so each write differs."""
    routes = []
    for r in range(ROUTES_PER_SERVICE):
        a, b = (s + r) % BACKENDS, (s + r + 1) % BACKENDS
        w = 1 + variant % 99 if r == 0 and variant else 50  # consecutive variants differ
        routes.append({"name": f"r{r}", "match": {"prefix": f"/v2/models/m{r}"},
                       "split": [{"backend": f"model-{a}", "weight": w}, {"backend": f"model-{b}", "weight": 100 - w}]})
    return {"kind": "Service", "name": f"svc-{s}", "spec": {"hosts": [f"svc-{s}.example"], "routes": routes}}


# --- the control plane's own figures ---------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_kib(pid: int) -> int:
    return int(re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))  # type: ignore[union-attr]


def metric_sum(cp: ControlPlane, name: str) -> float:
    text = http("GET", f"{cp.url}/metrics")[2].decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


# --- simulated proxies, in worker processes --------------------------------------------------

def worker(conn: Connection, target: str, ids: list[str], metadata: dict[str, Any], wave_s: float, client: str) -> None:
    # As the control plane does (controlplane/main.py): hundreds of streams' long-lived objects
    # would otherwise be re-scanned by the collector again and again during every push.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    asyncio.run(_worker(conn, target, ids, metadata, wave_s, CLIENTS[client]))


async def _worker(conn: Connection, target: str, ids: list[str], metadata: dict[str, Any], wave_s: float,
                  kind: type[AdsClient]) -> None:
    acked_at = [0.0] * len(ids)  # each proxy's last RDS ACK (time.monotonic: one clock for all processes)
    waiting: set[int] = set()
    since = 0.0
    done = asyncio.Event()

    def on_ack(i: int) -> Any:
        def record(type_url: str, _: Response) -> None:
            if type_url != ROUTE:
                return
            acked_at[i] = now = time.monotonic()
            if i in waiting and now > since:
                waiting.discard(i)
                if not waiting:
                    done.set()
        return record

    clients: dict[int, AdsClient] = {}
    failures: list[str] = []  # streams that ended: each proxy reconnects, as Envoy does

    async def proxy(i: int, node_id: str) -> None:
        while True:
            clients[i] = kind(target, node_id, protocol=("sotw", "delta")[i % 2], metadata=metadata)
            try:
                await clients[i].follow(on_ack(i))
            except (grpc.aio.AioRpcError, EOFError, ConnectionError) as exc:
                failures.append(repr(exc))
                await clients[i].close()
                await asyncio.sleep(1.0)

    tasks: list[asyncio.Task[None]] = []
    for i, node_id in enumerate(ids):
        tasks.append(asyncio.create_task(proxy(i, node_id)))
        if i % 50 == 49:
            await asyncio.sleep(wave_s)  # connect in waves of 50, as a fleet rolling out would
    loop = asyncio.get_running_loop()
    while True:
        command, arg = await loop.run_in_executor(None, conn.recv)
        if command == "acked_after":
            since, waiting = arg, {i for i, t in enumerate(acked_at) if t <= arg}
            done.clear()
            if waiting:
                try:
                    await asyncio.wait_for(done.wait(), 120)
                except TimeoutError:
                    conn.send(("error", f"{len(waiting)} proxies never ACKed; {len(failures)} streams ended: "
                                        f"{failures[:3]}"))
                    continue
            conn.send(("ok", (max(acked_at), len(failures))))
        elif command == "close":
            for task in tasks:
                task.cancel()
            await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
            conn.send(("ok", None))
            return


@dataclass
class Fleet:
    conns: list[Connection]
    procs: list[multiprocessing.process.BaseProcess]
    reconnects: int = 0  # streams that ended and were opened again, so far

    @classmethod
    def start(cls, n: int, workers: int, target: str, metadata: dict[str, Any], wave_s: float, client: str) -> Fleet:
        ctx = multiprocessing.get_context("spawn")  # grpc does not survive fork
        conns, procs = [], []
        for w in range(min(workers, n)):
            ids = [f"sim-{i}" for i in range(w, n, workers)]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, target, ids, metadata, wave_s, client), daemon=True)
            proc.start()
            conns.append(parent)
            procs.append(proc)
        return cls(conns, procs)

    def acked_after(self, t: float) -> float:
        """When the last simulated proxy ACKed routes sent after `t`."""
        for conn in self.conns:
            conn.send(("acked_after", t))
        last, self.reconnects = 0.0, 0
        for conn in self.conns:
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(value)
            last = max(last, value[0])
            self.reconnects += value[1]
        return last

    def close(self) -> None:
        for conn in self.conns:
            conn.send(("close", None))
        for conn, proc in zip(self.conns, self.procs, strict=True):
            conn.recv()
            proc.join(timeout=30)


def rds_updates(envoy: Envoy) -> int:
    """Route configurations Envoy applied: the one table's, or (scoped routes) every service's."""
    text = http("GET", f"{envoy.admin}/stats?filter=^http.edge.rds.*update_success$")[2].decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines())


# --- one fleet size ----------------------------------------------------------------------------

@dataclass
class Result:
    n: int
    connect_s: float
    latencies: list[float]
    put_s: float  # the admin API's answer to the write (validation, store commit)
    cpu_per_write: float
    fleet_cpu_per_write: float  # the simulated proxies' processes: they share the cores
    rss_base_mib: float
    rss_mib: float
    encodes_per_write: float
    pushes_per_write: float
    bytes_per_write: float  # xDS responses, all proxies together
    cp_histogram_mean: float  # sluice_convergence_seconds: committed until the last ACK arrived
    whole_s: float  # one write changing every route: until the last proxy ACKed it
    whole_bytes: float
    status_s: float  # GET /api/v1/proxies (counts and the first page), median of 5
    reconnects: int  # simulated streams that ended (and reconnected) during the run
    cli_s: float  # `sluice status` (summary and the proxies to look at first), median of 5

    @property
    def rss_per_proxy_kib(self) -> float:
        return (self.rss_mib - self.rss_base_mib) * 1024 / self.n


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# header, width, cell. p99 over 10 writes is the slowest of them.
COLUMNS: list[tuple[str, int, Callable[[Result], str]]] = [
    ("N", 5, lambda r: f"{r.n}"),
    ("connect s", 9, lambda r: f"{r.connect_s:.1f}"),
    ("PUT ms", 6, lambda r: f"{r.put_s * 1e3:.0f}"),
    ("p50 ms", 6, lambda r: f"{statistics.median(r.latencies) * 1e3:.0f}"),
    ("p99 ms", 6, lambda r: f"{percentile(r.latencies, 0.99) * 1e3:.0f}"),
    ("CP-side mean ms", 15, lambda r: f"{r.cp_histogram_mean * 1e3:.0f}"),
    ("CP CPU s/write", 14, lambda r: f"{r.cpu_per_write:.3f}"),
    ("CP CPU ms/write/proxy", 21, lambda r: f"{r.cpu_per_write / (r.n + 1) * 1e3:.2f}"),
    ("fleet CPU s/write", 17, lambda r: f"{r.fleet_cpu_per_write:.3f}"),
    ("CP RSS MiB", 10, lambda r: f"{r.rss_mib:.1f}"),
    ("RSS KiB/proxy", 13, lambda r: f"{r.rss_per_proxy_kib:.1f}"),
    ("encodes/write", 13, lambda r: f"{r.encodes_per_write:.1f}"),
    ("pushes/write", 12, lambda r: f"{r.pushes_per_write:.0f}"),
    ("KB/write", 10, lambda r: f"{r.bytes_per_write / 1e3:.0f}"),
    ("all-routes write ms", 19, lambda r: f"{r.whole_s * 1e3:.0f}"),
    ("all-routes KB", 13, lambda r: f"{r.whole_bytes / 1e3:.0f}"),
    ("reconnects", 10, lambda r: f"{r.reconnects}"),
    ("status ms", 9, lambda r: f"{r.status_s * 1e3:.0f}"),
    ("CLI status ms", 13, lambda r: f"{r.cli_s * 1e3:.0f}"),
]


@dataclass
class Counters:
    """What the control plane and the fleet have spent so far."""

    cpu: float
    fleet_cpu: float
    encodes: float
    pushes: float
    sent_bytes: float
    converged_sum: float
    converged_count: float

    @classmethod
    def read(cls, cp: ControlPlane, fleet: Fleet) -> Counters:
        return cls(cpu_seconds(cp.proc.pid), sum(cpu_seconds(p.pid) for p in fleet.procs if p.pid is not None),
                   metric_sum(cp, "sluice_xds_encodes_total"), metric_sum(cp, "sluice_xds_pushes_total"),
                   metric_sum(cp, "sluice_xds_sent_bytes_total"),
                   metric_sum(cp, "sluice_convergence_seconds_sum"),
                   metric_sum(cp, "sluice_convergence_seconds_count"))


def fleet_status(cp: ControlPlane) -> tuple[float, float]:
    """Seconds for GET /api/v1/proxies and for `sluice status` (in this process: no interpreter
    start), each the median of 5, with the whole fleet connected."""
    def timed(work: Callable[[], object]) -> float:
        times = []
        for _ in range(5):
            started = time.monotonic()
            work()
            times.append(time.monotonic() - started)
        return statistics.median(times)

    client = Client(cp.url)
    options = argparse.Namespace(limit=20, all=False, state=None)
    with contextlib.redirect_stdout(io.StringIO()):
        return timed(lambda: http("GET", f"{cp.url}/api/v1/proxies", timeout=30)), timed(lambda: status(client, options))


def write(cp: ControlPlane, envoy: Envoy, fleet: Fleet, variant: int, whole: bool = False) -> tuple[float, float]:
    """One admin write: (seconds the PUT took, seconds until the last proxy ACKed it).
    `whole`: every service changes (all 1,000 routes), in one apply."""
    before = rds_updates(envoy)
    time.sleep(0.3)  # the previous write is settled everywhere
    written = time.monotonic()
    if whole:
        status, body = cp.apply(*(service(s, variant) for s in range(SERVICES)))
    else:
        status, _, body = http("PUT", f"{cp.url}/api/v1/services/svc-0", service(0, variant), timeout=30)
    assert status == 200, body
    answered = time.monotonic()
    # Envoy applies each changed route configuration: one, or (scoped routes) one per service.
    changed = len(route_configs(envoy)) if whole else 1
    envoy_at = wait_until(lambda: rds_updates(envoy) >= before + changed and time.monotonic(), 120, 0.005,
                          what="the real Envoy's RDS update")
    return answered - written, max(fleet.acked_after(written), envoy_at) - written


def route_configs(envoy: Envoy) -> list[str]:
    return [c["route_config"]["name"] for c in envoy.config_dump("dynamic_route_configs")["configs"]]


def run(n: int, writes: int, workers: int, cp: ControlPlane, envoy: Envoy, first: int,
        spy: Path | None = None, wave_s: float = 0.05, client: str = "h2") -> Result:
    """`first`: the variant of the first write; each run's writes differ from the last run's.
    `spy`: sample the control plane with py-spy (native frames too) during the measured writes."""
    cp.proc.stop()  # a fresh process per fleet size: nothing left over from the last one
    cp.proc.start()
    cp.wait_ready()
    cp.wait_converged(envoy.node_id, timeout=30)
    time.sleep(1.0)
    rss_base = rss_kib(cp.proc.pid)
    started = time.monotonic()
    fleet = Fleet.start(n, workers, f"127.0.0.1:{cp.xds_port}",
                        {"listen_address": "127.0.0.1", "listen_port": envoy.listen_port}, wave_s, client)
    try:
        fleet.acked_after(0.0)
        connect_s = time.monotonic() - started
        time.sleep(1.0)
        rss = rss_kib(cp.proc.pid)
        status_s, cli_s = fleet_status(cp)
        write(cp, envoy, fleet, first)  # warms up, not counted
        before = Counters.read(cp, fleet)
        sampler = None if spy is None else subprocess.Popen(
            ["py-spy", "record", "--native", "--format", "raw", "--output", str(spy), "--pid", str(cp.proc.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        puts, latencies = zip(*(write(cp, envoy, fleet, variant) for variant in range(first + 1, first + writes + 1)), strict=True)
        after = Counters.read(cp, fleet)
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its file as it stops
            sampler.wait(60)
        _, whole_s = write(cp, envoy, fleet, first + writes + 1, whole=True)
        whole_bytes = Counters.read(cp, fleet).sent_bytes - after.sent_bytes
        reconnects = fleet.reconnects
    finally:
        fleet.close()
    converged = after.converged_count - before.converged_count
    return Result(n, connect_s, list(latencies), statistics.median(puts), (after.cpu - before.cpu) / writes,
                  (after.fleet_cpu - before.fleet_cpu) / writes, rss_base / 1024, rss / 1024,
                  (after.encodes - before.encodes) / writes, (after.pushes - before.pushes) / writes,
                  (after.sent_bytes - before.sent_bytes) / writes,
                  (after.converged_sum - before.converged_sum) / converged if converged else float("nan"),
                  whole_s, whole_bytes, status_s, reconnects, cli_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fleet", default="10,100,1000", help="simulated proxies per run (default 10,100,1000)")
    p.add_argument("--writes", type=int, default=10, help="measured writes per fleet size (default 10)")
    p.add_argument("--workers", type=int, default=2, help="processes running the simulated proxies (default 2)")
    p.add_argument("--profile", type=Path, help="cProfile the control plane into this file (last fleet size)")
    p.add_argument("--wave", type=float, default=0.05,
                   help="seconds between waves of 50 connecting proxies, per worker (default %(default)s)")
    p.add_argument("--py-spy", type=Path, dest="spy",
                   help="sample the control plane with py-spy during the measured writes of the last fleet size, "
                        "into this file (collapsed stacks; py-spy on PATH)")
    p.add_argument("--client", choices=sorted(CLIENTS), default="h2",
                   help="the simulated proxies' ADS client: h2 (tests/xds_h2_client.py, a fifth of the CPU) or "
                        "grpc (grpc.aio, as measured before 2026-11-30) (default %(default)s)")
    args = p.parse_args()
    sizes = [int(n) for n in args.fleet.split(",")]

    with tempfile.TemporaryDirectory(prefix="xds-scale-") as tmp:
        workdir = Path(tmp)
        cp = ControlPlane.start(workdir, env={"SLUICE_LOG_LEVEL": "WARNING"})
        envoy: Envoy | None = None
        try:
            status, body = cp.apply(*policy())
            assert status == 200, body
            envoy = Envoy.start(workdir, cp, node_id="real-envoy")
            cp.wait_converged(envoy.node_id, timeout=30)
            size = len(http("GET", f"{envoy.admin}/config_dump?resource=dynamic_route_configs")[2])
            print(f"policy: {SERVICES * ROUTES_PER_SERVICE} routes in {SERVICES} services, {BACKENDS} backends; "
                  f"Envoy's route config dump {size / 1024:.0f} KiB; {os.cpu_count()} cores")
            print(" ".join(f"{h:>{w}}" for h, w, _ in COLUMNS))
            for i, n in enumerate(sizes):
                if args.profile and i == len(sizes) - 1:
                    # python -m cProfile -o FILE -m sluice controlplane ...; written when it stops
                    cp.proc.argv[1:1] = ["-m", "cProfile", "-o", str(args.profile.resolve())]
                r = run(n, args.writes, args.workers, cp, envoy, first=1 + i * (args.writes + 2),
                        spy=args.spy if i == len(sizes) - 1 else None, wave_s=args.wave, client=args.client)
                print(" ".join(f"{value(r):>{w}}" for _, w, value in COLUMNS), flush=True)
        finally:
            if envoy is not None:
                envoy.proc.stop()
            cp.proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Backend benchmark: raw ONNX Runtime in-process (the ceiling) against the backend over HTTP.

    python bench/backend_bench.py --model classifier --concurrency 1,4,16,64
    python bench/backend_bench.py --url http://127.0.0.1:10000 ...   # e.g. through an Envoy
    python bench/backend_bench.py --model resnet50 --through-envoy    # ceiling, direct, via Envoy

Without --url a backend process is started on a free port (and stopped afterwards). The
backend is driven in a closed loop: `concurrency` callers each send one request, wait for
its answer, and send the next. Requests carry binary tensors (as tritonclient does) unless
--json. Two ceilings run the same model in this process with the backend's thread settings:
`concurrency` threads each running single requests, and (when it fits max_batch_size) one
thread running all `concurrency` requests as one batch, which is what perfect batching
could reach. The backend's ratio is against the better of the two.
On a small machine the load generator shares the cores with the server: read the ratios
as "what the serving path costs on this box", not as the server's capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from inference.config import load_config  # noqa: E402 - needs the repo root on sys.path when run as a script
from inference.runtime import cpu_count  # noqa: E402


@dataclass
class Result:
    label: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_s: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _input(repo: Path, model: str, rows: int) -> tuple[str, np.ndarray]:
    config = load_config(repo / model)
    tensor = config.input[0]
    dims = [max(d, 1) for d in tensor.dims]
    shape = [rows, *dims] if config.max_batch_size > 0 else dims
    return tensor.name, np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _session(model_path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def bench_ceiling_threads(session: ort.InferenceSession, name: str, x: np.ndarray, concurrency: int, seconds: float) -> Result:
    """The same model in this process, `concurrency` threads each running one request at a time."""
    session.run(None, {name: x})
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        mine = []
        while (start := time.perf_counter()) < deadline:
            session.run(None, {name: x})
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return Result("ORT in-process, threads", concurrency, len(latencies), 0, time.perf_counter() - started, latencies)


def bench_ceiling_batched(session: ort.InferenceSession, name: str, x: np.ndarray, concurrency: int, seconds: float) -> Result:
    """What perfect batching could reach: one thread running all `concurrency` requests as one batch."""
    batch = np.concatenate([x] * concurrency, axis=0)
    session.run(None, {name: batch})
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while (start := time.perf_counter()) < deadline:
        session.run(None, {name: batch})
        latencies.extend([time.perf_counter() - start] * concurrency)
    return Result("ORT in-process, one batch", concurrency, len(latencies), 0, time.perf_counter() - started, latencies)


def _request(name: str, x: np.ndarray, use_json: bool) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": name, "shape": list(x.shape), "datatype": "FP32"}
    if use_json:
        doc = {"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]}
        return json.dumps(doc).encode(), {"Content-Type": "application/json"}
    raw = x.astype("<f4").tobytes()
    doc = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}], "parameters": {"binary_data_output": True}}
    header = json.dumps(doc).encode()
    return header + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


async def bench_http(url: str, model: str, name: str, x: np.ndarray, concurrency: int, seconds: float, use_json: bool) -> Result:
    body, headers = _request(name, x, use_json)
    target = f"{url}/v2/models/{model}/infer"
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(target, data=body, headers=headers) as response:  # warm the connection
            await response.read()
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal errors
            while (start := time.perf_counter()) < deadline:
                async with session.post(target, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Result(f"backend {url}", concurrency, len(latencies), errors, time.perf_counter() - started, latencies)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backend(repo: Path, model: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "inference", "--http-port", str(port), "--model-repository", str(repo), "--load", model, "--log-level", "WARNING"],
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"backend exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("backend did not become ready in 120 s")


def start_edge(backend_url: str, model: str) -> tuple[list[subprocess.Popen[bytes]], str]:
    """A control plane and an edge Envoy (one worker) routing /v2 to the backend."""
    xds, admin, listen, envoy_admin = (_free_port() for _ in range(4))
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    cp = subprocess.Popen([sys.executable, "-m", "sluice", "controlplane", "--xds-port", str(xds), "--admin-port",
                           str(admin), "--store", f"sqlite:///{workdir / 'db'}", "--log-level", "WARNING"],
                          cwd=REPO_ROOT)
    procs = [cp]
    _wait_http(f"http://127.0.0.1:{admin}/healthz", cp)
    port = int(backend_url.rsplit(":", 1)[1])
    docs = [{"kind": "Backend", "name": "bench", "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}},
            {"kind": "Service", "name": "bench", "spec": {"routes": [
                {"name": "all", "match": {"prefix": "/v2"}, "split": [{"backend": "bench"}]}]}}]
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/api/v1/apply", method="POST",
                                     data=json.dumps({"documents": docs}).encode(),
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()
    envoy = subprocess.Popen([sys.executable, "-m", "sluice", "envoy", "--xds", f"127.0.0.1:{xds}",
                              "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{envoy_admin}",
                              "--concurrency", "1", "--node-id", "bench", "--bootstrap", str(workdir / "envoy.yaml")],
                             cwd=REPO_ROOT)
    procs.append(envoy)
    url = f"http://127.0.0.1:{listen}"
    _wait_http(f"{url}/v2/models/{model}/ready", envoy)
    return procs, url


def _wait_http(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[3]} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in 60 s")


def print_row(result: Result, ceiling: Result | None) -> None:
    ratio = f"{result.throughput / ceiling.throughput:6.2f}x of the best ORT row" if ceiling else ""
    print(
        f"{result.label:<32} c={result.concurrency:<4} {result.throughput:9.1f} req/s  "
        f"p50 {result.percentile(0.50):8.2f} ms  p99 {result.percentile(0.99):8.2f} ms  "
        f"errors {result.errors:<5} {ratio}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="classifier", help="model name in the repository (default: classifier)")
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "models", help="repository (default: ./models)")
    parser.add_argument("--url", help="backend (or proxy) base URL; default: start a backend on a free port")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated closed-loop caller counts (default: 1,4,16,64)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per point (default: 3)")
    parser.add_argument("--rows", type=int, default=1, help="batch rows per request (default: 1)")
    parser.add_argument("--json", action="store_true", help="send JSON tensors instead of binary")
    parser.add_argument("--skip-ceiling", action="store_true", help="measure only the backend")
    parser.add_argument("--through-envoy", action="store_true",
                        help="also measure through an edge Envoy programmed by a control plane (started here)")
    args = parser.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",")]
    name, x = _input(args.model_repository, args.model, args.rows)
    max_batch = load_config(args.model_repository / args.model).max_batch_size
    versions = sorted(int(p.name) for p in (args.model_repository / args.model).iterdir() if p.name.isdigit())
    model_path = args.model_repository / args.model / str(versions[-1]) / "model.onnx"
    threads = cpu_count()
    print(f"model {args.model} v{versions[-1]}, input {list(x.shape)}, {threads} cores, {args.seconds:.0f} s per point, "
          f"{'JSON' if args.json else 'binary'} tensors, ORT {ort.__version__}", flush=True)

    process = None
    url = args.url
    edge: list[subprocess.Popen[bytes]] = []
    if url is None:
        process, url = start_backend(args.model_repository, args.model)
    edge_url = None
    if args.through_envoy:
        edge, edge_url = start_edge(url, args.model)
    try:
        session = None if args.skip_ceiling else _session(model_path, threads)
        for concurrency in levels:
            ceiling = None
            if session is not None:
                candidates = [bench_ceiling_threads(session, name, x, concurrency, args.seconds)]
                if args.rows * concurrency <= max_batch:
                    candidates.append(bench_ceiling_batched(session, name, x, concurrency, args.seconds))
                for candidate in candidates:
                    print_row(candidate, None)
                ceiling = max(candidates, key=lambda r: r.throughput)
            print_row(asyncio.run(bench_http(url, args.model, name, x, concurrency, args.seconds, args.json)), ceiling)
            if edge_url is not None:
                through = asyncio.run(bench_http(edge_url, args.model, name, x, concurrency, args.seconds, args.json))
                through.label = "backend through Envoy"
                print_row(through, ceiling)
    finally:
        for child in reversed(edge):
            child.terminate()
            child.wait(timeout=30)
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

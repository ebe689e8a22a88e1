"""Start the real backend (`python -m inference`) as a subprocess on a free loopback port.

A module of its own (not conftest) so tests can import it by a name no other test folder uses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
# The token tests start the backend with when they use the repository API (model control).
CONTROL_TOKEN = "test-model-control-token"
MODEL_CONTROL = ("--model-control-mode", "explicit", "--model-control-token", CONTROL_TOKEN)
# Lower case: gRPC metadata keys must be, and HTTP headers do not care.
CONTROL_HEADERS = {"authorization": f"Bearer {CONTROL_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Backend:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"backend exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get_status("/v2/health/ready") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"backend not ready after {START_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_backend(repo: Path, log_dir: Path, *args: str, grpc: bool = False, wait: bool = True) -> Backend:
    http_port = free_port()
    grpc_port = free_port() if grpc else 0
    log_path = log_dir / f"backend-{http_port}.log"
    command = [
        sys.executable, "-m", "inference",
        "--http-port", str(http_port),
        "--grpc-port", str(grpc_port),
        "--model-repository", str(repo),
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_BACKEND_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    backend = Backend(process, http_port, grpc_port, log_path)
    if wait:
        try:
            backend.wait_ready()
        except BaseException:
            backend.stop()
            raise
    return backend


def variant_repo(source: Path, destination: Path, changes: dict[str, object], model: str = "classifier") -> Path:
    """A repository holding a copy of `model` whose config.yaml has `changes` applied (top-level keys)."""
    shutil.copytree(source / model, destination / model)
    config_path = destination / model / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.update(changes)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return destination


def write_slow_model(repo: Path, config: dict[str, object], size: int = 1024, rounds: int = 3) -> None:
    """A `slow` model (INPUT0 [-1, 4] -> OUTPUT0 [-1, 4], the input unchanged) that first
    multiplies `rounds` size x size matrices derived from its input, so each run holds its
    instance for tens of milliseconds: long enough for a test to fill the queue behind it."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("ReduceSum", ["INPUT0"], ["total"], keepdims=0),
        helper.make_node("Expand", ["total", "square"], ["m0"]),
    ]
    for i in range(rounds):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{rounds}"], ["noise"], keepdims=0),
        helper.make_node("Mul", ["noise", "zero"], ["nothing"]),
        helper.make_node("Add", ["INPUT0", "nothing"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(np.array([size, size], dtype=np.int64), "square"),
            numpy_helper.from_array((rng.standard_normal((size, size)) / size).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    base = {
        "name": "slow",
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    (repo / "slow" / "config.yaml").write_text(yaml.safe_dump({**base, **config}, sort_keys=False))

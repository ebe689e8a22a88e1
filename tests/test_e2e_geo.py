"""Geo routing end to end: the control plane, a real edge Envoy running georoute.wasm, two backend
processes (classifier version 1 as region `us`, version 2 as region `eu`), health-checked
failover between them, and table uploads through the admin API."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import Any

import pytest
import yaml
from geo_data import synthetic_rows
from harness import PYTHON, ROOT, Backend, ControlPlane, Envoy, http, wait_until
from mmdb_writer import country_record, write_mmdb
from policies import demo_policy

WASM = ROOT / "build/filters/bin/georoute.wasm"
BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
HEALTH = {"path": "/v2/health/ready", "interval_s": 1.0, "timeout_s": 0.5, "unhealthy_threshold": 2,
          "healthy_threshold": 1}
EU, US, V6_EU, NOWHERE = "198.51.100.10", "203.0.113.10", "2001:db8::10", "192.0.2.10"


def policy(v1_port: int, v2_port: int) -> list[dict[str, Any]]:
    return [
        {"kind": "Backend", "name": "classifier-v1",
         "spec": {"endpoints": [{"address": "127.0.0.1", "port": v1_port}], "health_check": HEALTH}},
        {"kind": "Backend", "name": "classifier-v2",
         "spec": {"endpoints": [{"address": "127.0.0.1", "port": v2_port}], "health_check": HEALTH}},
        {"kind": "Service", "name": "classifier", "spec": {"routes": [{
            "name": "infer", "match": {"prefix": "/v2/models/classifier"},
            "split": [{"backend": "classifier-v1"}]}]}},
        {"kind": "Edge", "name": "edge", "spec": {"xff_trusted_hops": 1}},
        {"kind": "Geo", "name": "geo", "spec": {"default_region": "us", "prefixes": [
            {"cidr": "198.51.100.0/24", "country": "DE", "region": "eu"},
            {"cidr": "2001:db8::/32", "country": "FR", "region": "eu"},
            {"cidr": "203.0.113.0/24", "country": "US", "region": "us"}]}},
        {"kind": "GeoRoute", "name": "classifier", "spec": {"service": "classifier", "route": "infer", "regions": {
            "eu": {"backend": "classifier-v2", "fallback": ["us"]},
            "us": {"backend": "classifier-v1"}}}},
    ]


@pytest.fixture
def edge(controlplane: ControlPlane, start_envoy: Callable[..., Envoy], backends: dict[int, Backend]) -> Envoy:
    assert WASM.exists(), f"{WASM} is missing: run `make filters`"
    status, body = controlplane.apply(*policy(backends[1].port, backends[2].port))
    assert status == 200, body
    envoy = start_envoy(controlplane, concurrency=2)
    controlplane.wait_converged(envoy.node_id)
    return envoy


def version(envoy: Envoy, client: str, headers: dict[str, str] | None = None) -> str:
    """The model version that answered a request the trusted load balancer forwarded for `client`."""
    status, response, _ = http("POST", f"{envoy.url}/v2/models/classifier/infer", BODY,
                               {"X-Forwarded-For": client, **(headers or {})})
    assert status == 200
    return response["x-model-version"]


def test_two_regions_reach_two_backends(edge: Envoy) -> None:
    assert version(edge, EU) == "2"
    assert version(edge, V6_EU) == "2"
    assert version(edge, f"::ffff:{EU}") == "2"
    assert version(edge, US) == "1"
    assert version(edge, NOWHERE) == "1"  # unmatched: the default region, us


def test_a_region_header_sent_by_the_client_is_overwritten(edge: Envoy) -> None:
    assert version(edge, US, {"X-Sluice-Region": "eu"}) == "1"
    assert version(edge, NOWHERE, {"X-Sluice-Region": "eu", "X-Sluice-Country": "DE"}) == "1"
    assert version(edge, EU, {"X-Sluice-Region": "us"}) == "2"


@dataclass
class Outcome:
    at: float
    client: str
    status: int
    version: str | None


class Traffic:
    """Requests from an eu and a us client in turn, on fresh connections, until stopped."""

    def __init__(self, envoy: Envoy) -> None:
        self.envoy = envoy
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for client in (EU, US):
                try:
                    status, headers, _ = http("POST", f"{self.envoy.url}/v2/models/classifier/infer", BODY,
                                              {"X-Forwarded-For": client}, timeout=10)
                    self.outcomes.append(Outcome(time.monotonic(), client, status, headers.get("x-model-version")))
                except OSError:
                    self.outcomes.append(Outcome(time.monotonic(), client, 0, None))
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def eu_since(self, at: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.client == EU and o.at >= at]


def test_eu_fails_over_to_us_and_comes_back(edge: Envoy, backends: dict[int, Backend]) -> None:
    eu_backend = backends[2]
    with Traffic(edge) as traffic:
        wait_until(lambda: [o.version for o in traffic.eu_since(0)][-3:] == ["2"] * 3, timeout=10,
                   what="eu traffic on version 2")
        killed = time.monotonic()
        eu_backend.proc.kill()  # SIGKILL: connections refused from now on
        moved = wait_until(lambda: next((o.at for o in traffic.eu_since(killed) if o.version == "1"), None),
                           timeout=10, what="eu traffic on version 1")
        # With no check failed yet, the failed try is retried at the next priority: at once.
        assert moved - killed <= HEALTH["interval_s"]
        # Once the checks mark it down (2 failures), eu requests go straight to us.
        time.sleep(HEALTH["interval_s"] * (HEALTH["unhealthy_threshold"] + 1))
        settled = time.monotonic()
        wait_until(lambda: len(traffic.eu_since(settled)) >= 5, timeout=10, what="eu traffic after failover")
        assert {o.version for o in traffic.eu_since(settled)} == {"1"}

        eu_backend.proc.start()
        eu_backend.wait_ready()
        ready = time.monotonic()
        back = wait_until(lambda: next((o.at for o in traffic.eu_since(ready) if o.version == "2"), None),
                          timeout=10, what="eu traffic back on version 2")
        assert back - ready <= HEALTH["interval_s"] * HEALTH["healthy_threshold"] + 1.0
        wait_until(lambda: len([o for o in traffic.eu_since(back)]) >= 5, timeout=10, what="more eu traffic")
    assert {o.version for o in traffic.eu_since(back)} == {"2"}
    failed = [o for o in traffic.outcomes if o.status != 200]
    assert failed == [], f"{len(failed)} of {len(traffic.outcomes)} requests failed: {failed[:5]}"
    us_versions = {o.version for o in traffic.outcomes if o.client == US}
    assert us_versions == {"1"}
    retried = http("GET", f"{edge.admin}/stats?filter=^cluster\\.geo\\.classifier\\.eu\\.upstream_rq_retry_success$")
    print(f"\neu on us {(moved - killed) * 1e3:.0f} ms after the kill, back on eu {(back - ready) * 1e3:.0f} ms after "
          f"the restart; {len(traffic.outcomes)} requests, none failed; {retried[2].decode().strip()}")


def upload(cp: ControlPlane, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    status, _, raw = http("POST", f"{cp.url}/api/v1/geo/table", body, {"Content-Type": content_type}, timeout=30)
    return status, json.loads(raw)


def test_uploaded_tables_apply_without_a_listener_drain(controlplane: ControlPlane, edge: Envoy) -> None:
    conn = HTTPConnection("127.0.0.1", edge.listen_port, timeout=10)

    def on_conn(client: str) -> str:
        conn.request("POST", "/v2/models/classifier/infer", body=BODY, headers={"X-Forwarded-For": client})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return response.getheader("x-model-version") or ""

    assert on_conn(EU) == "2"
    sock = conn.sock
    listener_version = edge.config_dump("dynamic_listeners")["configs"][0]["active_state"]["version_info"]

    # A MaxMind database names only countries: the Geo object maps them to regions.
    status, body = controlplane.apply({"kind": "Geo", "name": "geo", "spec": {
        "default_region": "us", "countries": {"DE": "eu", "US": "us"}, "prefixes": [
            {"cidr": "198.51.100.0/24", "country": "DE", "region": "eu"}]}})
    assert status == 200, body
    database = write_mmdb([(ipaddress.ip_network("203.0.113.0/24"), country_record("DE")),
                           (ipaddress.ip_network("198.51.100.0/24"), country_record("US"))])
    status, body = upload(controlplane, database, "application/octet-stream")
    assert status == 200 and body["ipv4_prefixes"] == 2, body
    controlplane.wait_converged(edge.node_id)
    wait_until(lambda: on_conn(US) == "2" and on_conn(EU) == "1", timeout=5, what="the imported table")

    # A CSV moves one network back; a table with a bad row changes nothing at all.
    status, body = upload(controlplane, b"cidr,country,region\n198.51.100.0/24,DE,eu\n", "text/csv")
    assert status == 200, body
    wait_until(lambda: on_conn(EU) == "2" and on_conn(US) == "1", timeout=5, what="the CSV table")
    revision = controlplane.revision()
    status, body = upload(controlplane, b"198.51.100.0/24,DE,us\n10.0.0.1/8,FR,eu\n", "text/csv")
    assert status == 422 and body["problems"][0]["loc"] == "line 2", body
    assert controlplane.revision() == revision
    assert on_conn(EU) == "2"

    assert conn.sock is sock  # the same keep-alive connection throughout: no drain
    (listener,) = edge.config_dump("dynamic_listeners")["configs"]
    assert "draining_state" not in listener
    assert listener["active_state"]["version_info"] == listener_version  # only the filter config changed



def test_example_file_and_cli_upload(controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
                                     backends: dict[int, Backend]) -> None:
    documents = [d for d in yaml.safe_load_all((ROOT / "examples/geo.yaml").read_text()) if d]
    for d in documents:  # the example names the demo's ports; follow the test backends' (as `make up` does)
        if d["kind"] == "Backend":
            d["spec"]["endpoints"][0]["port"] = backends[1 if d["name"] == "classifier-v1" else 2].port
    status, body = controlplane.apply(*demo_policy(backends[1].port, backends[2].port), *documents)
    assert status == 200, body
    envoy = start_envoy(controlplane)
    controlplane.wait_converged(envoy.node_id)
    assert (version(envoy, "198.51.100.7"), version(envoy, "203.0.113.7"), version(envoy, NOWHERE)) == ("2", "1", "1")

    def sluice(*args: str) -> str:
        result = subprocess.run([PYTHON, "-m", "sluice", *args, "--server", controlplane.url],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "2 IPv4 and 2 IPv6 prefixes" in sluice("geo", "upload", "examples/geo.csv")
    controlplane.wait_converged(envoy.node_id)
    # Rows without a region take it from the example's `countries`: FR -> eu, CA -> us.
    assert (version(envoy, "2001:db8:e0::1"), version(envoy, "2001:db8:a0::1")) == ("2", "1")
    assert version(envoy, "198.51.100.7") == "2"
    assert "uploaded table" in sluice("geo", "show")


def test_half_a_million_prefixes_reach_envoy_by_ecds(controlplane: ControlPlane, edge: Envoy) -> None:
    """A 4.7 MB filter configuration through the xDS stream (no gRPC size limit is in the way:
    Envoy's gRPC client sets none by default, nor does the Python server for sending)."""
    rows = synthetic_rows(500_000)
    table = "".join(f"{r.network},{r.label.country},{r.label.region}\n" for r in rows).encode()
    status, body = upload(controlplane, table, "text/csv")
    assert status == 200 and body["ipv4_prefixes"] + body["ipv6_prefixes"] == 500_000, body
    controlplane.wait_converged(edge.node_id, timeout=30)
    stats = http("GET", f"{edge.admin}/stats?filter=sluice_georoute.prefixes")[2].decode()
    assert stats.strip() == "wasmcustom.sluice_georoute.prefixes: 500000"
    eu = next(r for r in rows if r.label.region == "eu" and r.network.version == 4 and r.network.prefixlen < 32)
    assert version(edge, str(eu.network.network_address + 1)) == "2"

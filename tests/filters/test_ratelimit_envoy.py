"""ratelimit.wasm in a real Envoy (V8, --concurrency 2) with a static bootstrap."""

from __future__ import annotations

import http.client
import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from envoy_harness import Envoy, bootstrap, free_port, serving, wasm_filter

FILTER = "ratelimit"  # the `wasm` fixture (conftest.py)
BURST = 20
# The bootstrap stats_tags entry that turns the policy name into a Prometheus label
# (documented in filters/ratelimit/README.md; the control plane's bootstrap should carry it).
POLICY_TAG = {
    "tag_name": "policy",
    "regex": r"^wasmcustom\.sluice_ratelimit\.(([^.]+)\.)(?:requests|allowed|limited|shadow_limited)$",
}
CONFIG = {
    "xff_trusted_hops": 1,
    "policies": [
        # rate low enough that nothing refills during a test
        {"name": "per-client", "routes": ["r1"], "rate": 0.001, "burst": BURST, "key": [{"type": "client_ip"}]},
        {"name": "shadow-global", "routes": ["r1"], "rate": 0.001, "burst": 1, "key": [], "shadow": True},
    ],
}


@pytest.fixture(scope="module")
def envoy(wasm, tmp_path_factory):
    with serving(tmp_path_factory.mktemp("envoy"), [wasm_filter(wasm, json.dumps(CONFIG))],
                 routes=[("r1", "/limited"), ("r2", "/")], stats_config={"stats_tags": [POLICY_TAG]}) as proxy:
        yield proxy


def request(envoy: Envoy, path: str = "/limited", client: str = "192.0.2.10",
            headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection (spread over Envoy's workers), as sent by the trusted
    load balancer: X-Forwarded-For carries the client."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-Forwarded-For": client, "Connection": "close", **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_burst_admits_exactly_burst_across_workers_and_connections(envoy):
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: request(envoy, client="192.0.2.10"), range(BURST + 40)))
    assert Counter(status for status, _, _ in results) == Counter({200: BURST, 429: 40})
    # Both workers took connections: the buckets really are shared between their VMs.
    stats = envoy.admin("/stats?filter=worker_.\\.downstream_cx_total")
    per_worker = [int(v) for v in re.findall(r"worker_\d\.downstream_cx_total: (\d+)", stats)]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker), stats


def test_ratelimit_headers_on_admitted_and_rejected_responses(envoy):
    status, headers, _ = request(envoy, client="192.0.2.20")
    assert status == 200
    assert headers["ratelimit"] == f'"per-client";r={BURST - 1};t=1000'
    for _ in range(BURST - 1):
        request(envoy, client="192.0.2.20")
    status, headers, body = request(envoy, client="192.0.2.20")
    assert status == 429
    assert json.loads(body) == {"error": "rate limited", "policy": "per-client", "retry_after_s": 1000}
    assert headers["retry-after"] == "1000"
    assert headers["ratelimit-policy"] == f'"per-client";q={BURST};w={BURST * 1000}'
    assert headers["ratelimit"] == '"per-client";r=0;t=1000'
    assert headers["content-type"] == "application/json"


def test_left_xff_entries_do_not_evade(envoy):
    codes = Counter(request(envoy, client=f"10.9.9.{i}, 192.0.2.30")[0] for i in range(BURST + 3))
    assert codes == Counter({200: BURST, 429: 3})


def test_other_routes_are_not_limited(envoy):
    results = [request(envoy, path="/other", client="192.0.2.40") for _ in range(BURST + 3)]
    assert all(status == 200 and "ratelimit" not in headers for status, headers, _ in results)


def test_grpc_gets_resource_exhausted(envoy):
    grpc = {"content-type": "application/grpc", "te": "trailers"}
    for _ in range(BURST):
        request(envoy, client="192.0.2.50", headers=grpc)
    status, headers, _ = request(envoy, client="192.0.2.50", headers=grpc)
    assert status == 200  # a gRPC error is an HTTP 200 with grpc-status
    assert headers["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
    assert "per-client" in headers["grpc-message"]
    assert headers["retry-after"] == "1000"


def test_stats_in_prometheus(envoy):
    for _ in range(BURST + 2):
        request(envoy, client="192.0.2.60")
    prometheus = envoy.admin("/stats/prometheus")
    values = {}
    for line in prometheus.splitlines():
        m = re.match(r'^(sluice_ratelimit_\w+)\{policy="([\w-]+)"\} (\d+)$', line)
        if m:
            values[(m.group(1), m.group(2))] = int(m.group(3))
    assert values[("sluice_ratelimit_limited", "per-client")] >= 2
    assert values[("sluice_ratelimit_allowed", "per-client")] >= BURST
    assert values[("sluice_ratelimit_requests", "per-client")] >= BURST + 2
    assert values[("sluice_ratelimit_shadow_limited", "shadow-global")] >= 1
    assert re.search(r"^sluice_ratelimit_slot_evictions\{\} 0$", prometheus, re.M)
    # Without the stats_tags entry the policy stays in the name (as /stats shows it).
    text = envoy.admin("/stats?filter=sluice_ratelimit")
    assert re.search(r"^wasmcustom\.sluice_ratelimit\.per-client\.limited: \d+$", text, re.M), text


def test_invalid_configuration_is_refused_with_the_reason_logged(wasm, tmp_path):
    bad = json.dumps({"policies": [{"name": "per-client", "rate": 0, "burst": 5}]})
    proxy = Envoy(tmp_path, bootstrap(free_port(), free_port(), [wasm_filter(wasm, bad)]), concurrency=1)
    with pytest.raises(RuntimeError, match="exited"):
        proxy.start()
    log = proxy.log()
    assert 'ratelimit: rejected plugin configuration: policy "per-client": rate must be' in log
    assert "Unable to create Wasm plugin sluice_ratelimit" in log

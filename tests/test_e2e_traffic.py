"""Traffic policy (outlier detection, health checks, retries, mirroring, circuit breakers,
hashing, header routing, HTTP/2 upstreams) in a real Envoy in front of real backends."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import Backend, ControlPlane, Envoy, free_port, get_json, http, wait_until
from tritonclient.grpc import service_pb2, service_pb2_grpc

BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
INFER = "/v2/models/classifier/infer"
Start = Callable[..., Envoy]


def backend(name: str, *ports: int, **spec: Any) -> dict[str, Any]:
    endpoints = [{"address": "127.0.0.1", "port": port} for port in ports]
    return {"kind": "Backend", "name": name, "spec": {"endpoints": endpoints, **spec}}


def route(split: str, name: str = "infer", prefix: str = "/v2/models/classifier", **spec: Any) -> dict[str, Any]:
    return {"name": name, "match": {"prefix": prefix, **spec.pop("match", {})},
            "split": [{"backend": split, "weight": 100}], **spec}


def service(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Service", "name": "classifier", "spec": {"hosts": ["*"], "routes": list(routes)}}


def serve(cp: ControlPlane, start_envoy: Start, *documents: dict[str, Any]) -> Envoy:
    """Apply the policy, start an Envoy on it, and check that Envoy accepted every resource."""
    status, body = cp.apply(*documents)
    assert status == 200, body
    envoy = start_envoy(cp)

    def settled() -> dict[str, Any] | None:  # every type ACKed at this revision, or one NACKed
        proxy = next((p for p in cp.proxies() if p["node_id"] == envoy.node_id), None)
        if proxy and (proxy["revision"] == body["revision"] or any(t["last_nack"] for t in proxy["types"].values())):
            return proxy
        return None

    proxy = wait_until(settled, timeout=10, what=f"{envoy.node_id} to ACK or NACK")
    assert {t: s["last_nack"] for t, s in proxy["types"].items() if s["last_nack"]} == {}
    return envoy


def infer(envoy: Envoy, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    status, response_headers, _ = http("POST", envoy.url + INFER, BODY, headers)
    return status, response_headers


def versions(envoy: Envoy, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    """Who answered n requests: a model version, or the HTTP status of a failure."""
    out: Counter[str] = Counter()
    for _ in range(n):
        status, response_headers = infer(envoy, headers)
        out[response_headers.get("x-model-version", "?") if status == 200 else str(status)] += 1
    return out


def stat(envoy: Envoy, name: str) -> int:
    _, _, raw = http("GET", f"{envoy.admin}/stats?filter=^{urllib.parse.quote(re.escape(name))}$")
    (line,) = raw.decode().splitlines()
    return int(line.rsplit(":", 1)[1])


def host_health(envoy: Envoy, cluster: str) -> dict[int, dict[str, Any]]:
    """Envoy's view of each endpoint of a cluster, by port."""
    clusters = get_json(f"{envoy.admin}/clusters?format=json")["cluster_statuses"]
    hosts = next(c for c in clusters if c["name"] == cluster)["host_statuses"]
    return {h["address"]["socket_address"]["port_value"]: h["health_status"] for h in hosts}


def successes(b: Backend, version: int) -> int:
    metrics = http("GET", f"{b.url}/metrics")[2].decode()
    found = re.search(rf'^nv_inference_request_success\{{model="classifier",version="{version}"\}} (\d+)$', metrics, re.M)
    assert found, metrics
    return int(found.group(1))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traffic")


@pytest.fixture(scope="module")
def failing(workdir: Path, model_repository: Path) -> Iterator[Backend]:
    """A backend whose every inference fails with HTTP 500 (its health endpoints still answer)."""
    b = Backend.start(workdir, model_repository, "classifier:2", "--fault-error-rate", "1.0")
    yield b
    b.proc.stop()


def test_every_option_is_accepted_by_envoy(controlplane: ControlPlane, start_envoy: Start,
                                            backends: dict[int, Backend]) -> None:
    v1, v2 = backends[1].port, backends[2].port
    envoy = serve(
        controlplane, start_envoy,
        backend("full", v1, lb_policy="round_robin", slow_start={"window_s": 30, "aggression": 1.5},
                outlier_detection={"consecutive_5xx": 7, "consecutive_gateway_errors": None,
                                   "success_rate": {"stdev_factor": 1.5}, "failure_percentage": {"threshold_percent": 90},
                                   "interval_s": 2, "base_ejection_time_s": 10, "max_ejection_time_s": 60},
                health_check={"interval_s": 2, "timeout_s": 0.5},
                circuit_breakers={"max_connections": 64, "max_requests": 32, "retry_budget": None},
                idle_timeout_s=20),
        backend("ring", v2, lb_policy="ring_hash", outlier_detection=None),
        backend("maglev", v2, lb_policy="maglev", protocol="http2"),
        service(route("full", idle_timeout_s=15, timeout_s=20,
                      match={"methods": ["POST", "PUT"], "query_parameters": [{"name": "debug", "present": False}]},
                      retries={"num_retries": 3, "retry_on": ["5xx", "reset"], "per_try_timeout_s": 5, "other_host": False},
                      mirrors=[{"backend": "ring", "percent": 12.5}],
                      hash_on=[{"type": "header", "name": "x-user", "terminal": True},
                               {"type": "cookie", "name": "affinity", "cookie_ttl_s": 3600},
                               {"type": "query_parameter", "name": "session"}, {"type": "source_ip"}]),
                route("maglev", name="grpc", prefix="/inference.GRPCInferenceService/", retries=None)),
    )
    assert versions(envoy, 3) == Counter({"1": 3})
    (full,) = [c["cluster"] for c in envoy.config_dump("dynamic_active_clusters")["configs"]
               if c["cluster"]["name"] == "full"]
    assert full["outlier_detection"]["consecutive_5xx"] == 7
    assert full["health_checks"][0]["http_health_check"]["path"] == "/v2/health/ready"
    assert full["circuit_breakers"]["thresholds"][0]["max_requests"] == 32


def test_bad_traffic_policy_is_refused_with_its_path(controlplane: ControlPlane) -> None:
    status, body = controlplane.apply(
        backend("pool", 8001, outlier_detection={"max_ejection_percent": 150}),
        service(route("pool", retries={"retry_on": ["5xx", "on-tuesdays"]})),
    )
    assert status == 422
    assert [p["loc"] for p in body["problems"]] == ["documents.0.spec.outlier_detection.max_ejection_percent",
                                                    "documents.1.spec.routes.0.retries.retry_on.1"]


def test_header_sends_a_b_group_to_version_2(controlplane: ControlPlane, start_envoy: Start,
                                             backends: dict[int, Backend]) -> None:
    envoy = serve(
        controlplane, start_envoy,
        backend("classifier-v1", backends[1].port), backend("classifier-v2", backends[2].port),
        service(route("classifier-v2", name="beta", match={"headers": [{"name": "x-group", "exact": "beta"}]}),
                route("classifier-v1")),
    )
    assert versions(envoy, 5, {"x-group": "beta"}) == Counter({"2": 5})
    assert versions(envoy, 5, {"x-group": "alpha"}) == Counter({"1": 5})
    assert versions(envoy, 5) == Counter({"1": 5})


def test_outlier_detection_ejects_an_endpoint_that_fails(controlplane: ControlPlane, start_envoy: Start,
                                                         backends: dict[int, Backend], failing: Backend) -> None:
    # No retries: every failure reaches the client, so only ejection can stop them.
    envoy = serve(
        controlplane, start_envoy,
        backend("pool", failing.port, backends[1].port, lb_policy="round_robin",
                outlier_detection={"consecutive_5xx": 3}),
        service(route("pool", retries=None)),
    )
    assert versions(envoy, 6) == Counter({"1": 3, "500": 3})  # round robin: every other request fails
    wait_until(lambda: stat(envoy, "cluster.pool.outlier_detection.ejections_enforced_consecutive_5xx") == 1,
               timeout=2, what="ejection on the third 500 in a row")
    assert host_health(envoy, "pool")[failing.port].get("failed_outlier_check") is True
    assert versions(envoy, 20) == Counter({"1": 20})


def test_active_health_check_takes_a_stopped_backend_out(controlplane: ControlPlane, start_envoy: Start,
                                                         backends: dict[int, Backend], workdir: Path,
                                                         model_repository: Path) -> None:
    doomed = Backend.start(workdir, model_repository, "classifier:2")
    try:
        # Neither retries nor outlier detection: the health check alone must steer traffic.
        envoy = serve(
            controlplane, start_envoy,
            backend("pool", backends[1].port, doomed.port, lb_policy="round_robin", outlier_detection=None,
                    health_check={"interval_s": 0.5, "timeout_s": 0.5, "unhealthy_threshold": 1}),
            service(route("pool", retries=None)),
        )
        wait_until(lambda: not any(h.get("failed_active_health_check") for h in host_health(envoy, "pool").values()),
                   timeout=5, what="both endpoints to pass their health check")
        assert versions(envoy, 10) == Counter({"1": 5, "2": 5})
        doomed.proc.stop()
        # Checked at the configured interval even without traffic (no_traffic_interval).
        wait_until(lambda: host_health(envoy, "pool")[doomed.port].get("failed_active_health_check"), timeout=5,
                   what="the stopped backend to fail its health check")
        assert versions(envoy, 20) == Counter({"1": 20})
    finally:
        doomed.proc.stop()


def test_retries_turn_errors_into_successes_on_another_host(controlplane: ControlPlane, start_envoy: Start,
                                                            backends: dict[int, Backend], failing: Backend) -> None:
    envoy = serve(
        controlplane, start_envoy,
        backend("pool", failing.port, backends[1].port, lb_policy="round_robin", outlier_detection=None),
        service(route("pool", retries={"num_retries": 1, "retry_on": ["5xx"]})),
    )
    assert versions(envoy, 20) == Counter({"1": 20})
    retried = stat(envoy, "cluster.pool.upstream_rq_retry")
    assert retried >= 10 and stat(envoy, "cluster.pool.upstream_rq_retry_success") == retried


def test_mirror_sends_a_copy_to_another_backend(controlplane: ControlPlane, start_envoy: Start,
                                                backends: dict[int, Backend]) -> None:
    envoy = serve(
        controlplane, start_envoy,
        backend("classifier-v1", backends[1].port), backend("classifier-v2", backends[2].port),
        service(route("classifier-v1", mirrors=[{"backend": "classifier-v2"}])),
    )
    before = successes(backends[2], 2)
    assert versions(envoy, 6) == Counter({"1": 6})  # clients only ever see the primary's answers
    wait_until(lambda: successes(backends[2], 2) == before + 6, timeout=5, what="6 mirrored requests at version 2")


def test_circuit_breaker_limits_concurrency(controlplane: ControlPlane, start_envoy: Start, workdir: Path,
                                            model_repository: Path) -> None:
    slow = Backend.start(workdir, model_repository, "classifier:1", "--fault-delay-ms", "500")
    try:
        envoy = serve(
            controlplane, start_envoy,
            backend("slow", slow.port, circuit_breakers={"max_connections": 1, "max_pending_requests": 1,
                                                         "max_requests": 1}),
            service(route("slow", retries=None)),
        )
        (cluster,) = [c["cluster"] for c in envoy.config_dump("dynamic_active_clusters")["configs"]]
        (limits,) = cluster["circuit_breakers"]["thresholds"]
        assert (limits["max_connections"], limits["max_pending_requests"], limits["max_requests"]) == (1, 1, 1)
        assert stat(envoy, "cluster.slow.circuit_breakers.default.remaining_rq") == 1
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: infer(envoy), range(6)))
        overloaded = [h for s, h in answers if s == 503]
        assert overloaded and all(h.get("x-envoy-overloaded") == "true" for h in overloaded), answers
        assert Counter(s for s, _ in answers)[200] >= 1
        assert stat(envoy, "cluster.slow.upstream_rq_pending_overflow") == len(overloaded)
    finally:
        slow.proc.stop()


def test_ring_hash_keeps_a_user_on_one_endpoint(controlplane: ControlPlane, start_envoy: Start,
                                                backends: dict[int, Backend]) -> None:
    # One backend holding both processes; the version header says which endpoint answered.
    envoy = serve(
        controlplane, start_envoy,
        backend("pool", backends[1].port, backends[2].port, lb_policy="ring_hash"),
        service(route("pool", hash_on=[{"type": "header", "name": "x-user"}])),
    )
    placed = {user: versions(envoy, 3, {"x-user": user}) for user in (f"user-{i}" for i in range(16))}
    assert all(len(seen) == 1 for seen in placed.values()), placed  # each user sticks to one endpoint
    assert {v for seen in placed.values() for v in seen} == {"1", "2"}  # and users spread over both


def test_http2_upstream_carries_grpc(controlplane: ControlPlane, start_envoy: Start, workdir: Path,
                                     model_repository: Path) -> None:
    grpc_port = free_port()
    server = Backend.start(workdir, model_repository, "classifier:1", "--grpc-port", str(grpc_port))
    try:
        envoy = serve(
            controlplane, start_envoy,
            backend("grpc", grpc_port, protocol="http2"),
            service(route("grpc", name="grpc", prefix="/inference.GRPCInferenceService/")),
        )
        with grpc.insecure_channel(f"127.0.0.1:{envoy.listen_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5).live
            ready = stub.ModelReady(service_pb2.ModelReadyRequest(name="classifier", version="1"), timeout=5)
            assert ready.ready
        assert stat(envoy, "cluster.grpc.upstream_cx_http2_total") >= 1
    finally:
        server.proc.stop()

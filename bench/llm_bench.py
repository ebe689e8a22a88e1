"""What routing on the body's `model` costs at the edge, and what streams through it keep.

Part 1, routing (wrk -t1 -c16, a 1 KiB OpenAI chat body alternating two models, Envoys side by
side with --concurrency 1, each forwarding to one upstream Envoy answering 200 directly):

  path         no HTTP filter: the route chosen by path alone (the baseline)
  llm          sluice's llm filter (filters/llm): reads `model`, sets x-sluice-model, routes on it
  native       envoy.filters.http.json_to_metadata: `model` into dynamic metadata, routes matching
               that metadata (no rewrite, no OpenAI errors, no /v1/models: the native building
               block alone)
  ext_proc     envoy.filters.http.ext_proc (buffered body) calling a gRPC external processor, in
               Python here, that does the same extraction and sets the same header: the design
               Envoy AI Gateway uses, with its extra hop

Each is checked first: both models' requests must reach the cluster of their model.

Part 2, streams (--sse): the generative backend emitting a token every 20 ms, 64 tokens per
request, one request at a time: TTFT p50 and the median gap between chunks, at the client, direct
and through the `path` and `llm` Envoys (same run, interleaved).

  .venv/bin/python bench/llm_bench.py [--duration 5] [--rounds 3] [--sse]

Needs wrk (`apt-get install -y wrk`), the built filters (`make filters`) and, for --sse, the
models (`make models`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import envoy_wrk
import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy_wrk import bootstrap, free_port, wasm_filter

ROOT = Path(__file__).resolve().parents[1]
LLM_WASM = ROOT / "build" / "filters" / "bin" / "llm.wasm"
MODELS = ("alpha", "beta")
BODY_BYTES = 1024
ROUTE = "all/openai"  # the bench bootstrap's virtual host is "all"


def chat_body(model: str, size: int = BODY_BYTES) -> str:
    empty = json.dumps({"model": model, "messages": [{"role": "user", "content": ""}], "max_tokens": 16})
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * (size - len(empty))}],
                       "max_tokens": 16})


def wrk_script(workdir: Path) -> Path:
    bodies = ", ".join(json.dumps(chat_body(m)) for m in MODELS)
    path = workdir / "alternate.lua"
    path.write_text(f"""
local bodies = {{{bodies}}}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/chat/completions", {{["Content-Type"] = "application/json"}}, bodies[i % 2 + 1])
end
""")
    return path


def cluster(name: str, port: int, http2: bool = False) -> dict:
    out: dict = {"name": name, "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                     "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    if http2:
        out["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return out


def header_routes() -> list[dict]:
    """Per model a route matching the header the llm filter (or the external processor) sets,
    then the entry route the filter reads the body on."""
    limit = {"request_body_buffer_limit": 9 * 1024 * 1024}
    return [*({"name": ROUTE, "match": {"prefix": "/v1/", "headers": [
                  {"name": "x-sluice-model", "string_match": {"exact": f"{m}/{m}"}}]},
               "route": {"cluster": m}, **limit} for m in MODELS),
            {"name": ROUTE, "match": {"prefix": "/v1/"}, "route": {"cluster": "alpha"}, **limit}]


def metadata_routes() -> list[dict]:
    return [*({"name": ROUTE, "match": {"prefix": "/v1/", "dynamic_metadata": [{
                  "filter": "sluice", "path": [{"key": "model"}], "value": {"string_match": {"exact": m}}}]},
               "route": {"cluster": m}} for m in MODELS),
            {"name": ROUTE, "match": {"prefix": "/v1/"}, "route": {"cluster": "alpha"}}]


def llm_filter() -> dict:
    config = {"max_body_bytes": 8 * 1024 * 1024, "routes": [ROUTE], "models": [
        {"service": "all", "name": m, "targets": [{"header": f"{m}/{m}", "weight": 1}]} for m in MODELS]}
    entry = wasm_filter(LLM_WASM, json.dumps(config), vm_id="sluice-llm", name="llm")
    entry["typed_config"]["config"]["allow_on_headers_stop_iteration"] = True
    return entry


NATIVE = {"name": "envoy.filters.http.json_to_metadata", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
    "request_rules": {"rules": [{"selectors": [{"key": "model"}],
                                 "on_present": {"metadata_namespace": "sluice", "key": "model"}}]}}}


def ext_proc_filter() -> dict:
    return {"name": "envoy.filters.http.ext_proc", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "extproc"}, "timeout": "5s"},
        # The processor's answer to the body sets the header the routes match on.
        "route_cache_action": "CLEAR",
        "processing_mode": {"request_header_mode": "SEND", "response_header_mode": "SKIP",
                            "request_body_mode": "BUFFERED"}}}


class Processor(ep_grpc.ExternalProcessorServicer):
    """Reads `model` from the buffered body and sets x-sluice-model, clearing the route cache."""

    def Process(self, requests: Iterator[ep.ProcessingRequest], context: grpc.ServicerContext) -> Iterator[ep.ProcessingResponse]:
        for request in requests:
            if request.HasField("request_body"):
                model = json.loads(request.request_body.body)["model"]
                mutation = HeaderValueOption(header=HeaderValue(key="x-sluice-model", raw_value=f"{model}/{model}".encode()))
                common = ep.CommonResponse(clear_route_cache=True)
                common.header_mutation.set_headers.append(mutation)
                yield ep.ProcessingResponse(request_body=ep.BodyResponse(response=common))
            elif request.HasField("request_headers"):
                yield ep.ProcessingResponse(request_headers=ep.HeadersResponse())


@contextmanager
def processor_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    ep_grpc.add_ExternalProcessorServicer_to_server(Processor(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def edge(workdir: Path, name: str, filters: list[dict], routes: list[dict], upstream: int,
         extproc: int | None = None) -> envoy_wrk.Envoy:
    config = bootstrap(free_port(), free_port(), filters, routes=routes)
    config["static_resources"]["clusters"] = [cluster(m, upstream) for m in MODELS]
    if extproc is not None:
        config["static_resources"]["clusters"].append(cluster("extproc", extproc, http2=True))
    return envoy_wrk.bench_envoy(workdir, name, config)


def cluster_counts(envoy: envoy_wrk.Envoy) -> tuple[int, int]:
    stats = envoy.admin("/stats?filter=upstream_rq_total")
    counts = {line.split(".")[1]: int(line.rsplit(" ", 1)[1]) for line in stats.splitlines()
              if line.startswith("cluster.") and line.split(".")[1] in MODELS}
    return counts.get(MODELS[0], 0), counts.get(MODELS[1], 0)


def check_routing(envoy: envoy_wrk.Envoy) -> str:
    """Sends 10 requests per model: "ok" when each reached its model's cluster and no other."""
    for i, model in enumerate(MODELS):
        before = cluster_counts(envoy)
        for _ in range(10):
            connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=5)
            connection.request("POST", "/v1/chat/completions", body=chat_body(model),
                               headers={"Content-Type": "application/json"})
            assert connection.getresponse().status == 200
            connection.close()
        delta = [b - a for a, b in zip(before, cluster_counts(envoy), strict=True)]
        if delta[i] != 10 or sum(delta) != 10:
            return f"MISROUTED ({model}: {delta})"
    return "ok"


def routing(args: argparse.Namespace, workdir: Path) -> None:
    upstream_config = bootstrap(free_port(), free_port(), [], routes=(("ok", "/"),))
    upstream = envoy_wrk.Envoy(workdir, upstream_config, name="upstream", concurrency=1, log_level="warn")
    with processor_server() as extproc_port:
        envoys = {
            "path": edge(workdir, "path", [], [{"name": ROUTE, "match": {"prefix": "/v1/"},
                                                "route": {"cluster": "alpha"}}], upstream.port),
            "llm": edge(workdir, "llm", [llm_filter()], header_routes(), upstream.port),
            "native": edge(workdir, "native", [NATIVE], metadata_routes(), upstream.port),
            "ext_proc": edge(workdir, "ext_proc", [ext_proc_filter()], header_routes(), upstream.port, extproc_port),
        }
        with envoy_wrk.running({"upstream": upstream, **envoys}, 60):
            checks = {name: check_routing(e) if name != "path" else "by path" for name, e in envoys.items()}
            script = wrk_script(workdir)
            median = envoy_wrk.measure(envoys, dict.fromkeys(envoys, script), duration=args.duration, rounds=args.rounds)
    envoy_wrk.report(
        f"Routing a {BODY_BYTES} B chat body on its model, wrk -t1 -c16, {envoy_wrk.runs_note(args.rounds, args.duration)}",
        median, "routed", lambda name, _: checks[name],
        [("llm vs path", "llm", "path", "the body read in the proxy"),
         ("native vs path", "native", "path", "json_to_metadata"),
         ("ext_proc vs path", "ext_proc", "path", "a gRPC hop per request (Python processor)")])
    for name in ("llm", "native", "ext_proc"):
        print(f"p50 added over path: {name:<9} {(median[name]['p50'] - median['path']['p50']) * 1e3:+.3f} ms")


# -- part 2: streams -----------------------------------------------------------------------------

def stream_once(port: int, model: str, tokens: int) -> tuple[float, float]:
    """TTFT and the median gap between content chunks, at the client."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens,
                       "stream": True, "ignore_eos": True, "temperature": 0})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    arrivals = []
    for line in response:
        if line.startswith(b"data: {") and b'"content"' in line:
            arrivals.append(time.perf_counter())
    connection.close()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return arrivals[0] - start, statistics.median(gaps)


def streams(args: argparse.Namespace, workdir: Path) -> None:
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, "-m", "sluice", "backend", "--http-port", str(backend_port),
                                "--model-repository", str(ROOT / "models"), "--load", "tiny-llama",
                                "--fault-step-delay-ms", "20"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=1)
                connection.request("GET", "/v2/health/ready")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the generative backend did not become ready")
            time.sleep(0.2)
        route = {"name": ROUTE, "match": {"prefix": "/v1/"}, "route": {"cluster": "tiny", "timeout": "0s"}}
        llm_config = {"max_body_bytes": 8 * 1024 * 1024, "routes": [ROUTE], "models": [
            {"service": "all", "name": "tiny-llama", "targets": [{"header": "tiny/tiny", "weight": 1}]}]}
        llm = wasm_filter(LLM_WASM, json.dumps(llm_config), vm_id="sluice-llm", name="llm")
        llm["typed_config"]["config"]["allow_on_headers_stop_iteration"] = True
        envoys = {}
        for name, filters, routes in (
                ("path", [], [route]),
                ("llm", [llm], [{**route, "match": {"prefix": "/v1/", "headers": [
                    {"name": "x-sluice-model", "string_match": {"exact": "tiny/tiny"}}]}}, route])):
            config = bootstrap(free_port(), free_port(), filters, routes=routes)
            config["static_resources"]["clusters"] = [cluster("tiny", backend_port)]
            envoys[name] = envoy_wrk.bench_envoy(workdir, f"sse-{name}", config)
        ports = {"direct": backend_port, **{n: e.port for n, e in envoys.items()}}
        with envoy_wrk.running(envoys, 60):
            samples: dict[str, list[tuple[float, float]]] = {n: [] for n in ports}
            for port in ports.values():
                stream_once(port, "tiny-llama", 8)  # warm-up
            for _ in range(args.streams):
                for name, port in ports.items():
                    samples[name].append(stream_once(port, "tiny-llama", 64))
    finally:
        backend.terminate()
        backend.wait(timeout=30)
    print(f"\nStreams: a token every 20 ms, 64 per request, {args.streams} requests per path, interleaved")
    print(f"{'path':<8} {'TTFT p50':>10} {'gap p50':>9}")
    ttft = {n: statistics.median(t for t, _ in s) for n, s in samples.items()}
    for name, s in samples.items():
        print(f"{name:<8} {ttft[name] * 1e3:>8.2f}ms {statistics.median(g for _, g in s) * 1e3:>7.2f}ms")
    for name in ("path", "llm"):
        print(f"TTFT p50 added over direct: {name:<5} {(ttft[name] - ttft['direct']) * 1e3:+.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sse", action="store_true", help="also measure streams (needs `make models`)")
    parser.add_argument("--streams", type=int, default=15, help="streamed requests per path (with --sse)")
    args = envoy_wrk.parse_args(parser)
    if not envoy_wrk.ready_to_run(LLM_WASM):
        raise SystemExit(1)
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        routing(args, Path(tmp))
        if args.sse:
            streams(args, Path(tmp))


if __name__ == "__main__":
    main()

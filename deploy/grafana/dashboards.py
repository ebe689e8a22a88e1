"""Grafana dashboards for sluice, written as JSON into deploy/grafana/dashboards/.

    python deploy/grafana/dashboards.py          # rewrite the JSON files
    python deploy/grafana/dashboards.py --check  # exit 1 when a file is not what this writes

The JSON is what Grafana loads (compose provisions it; the Kubernetes overlays ship it as
ConfigMaps for the Grafana sidecar); this script keeps the three consistent. Every query names
metrics the mesh exports under those exact names: tests/test_dashboards.py scrapes a live mesh
and fails when one is missing, so a renamed metric breaks the build, not the dashboard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


class Board:
    def __init__(self, uid: str, title: str, description: str, tags: list[str]) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: list[dict[str, Any]] = []
        self._y = 0
        self._x = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "id": len(self.panels) + 1,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y}, "panels": []})
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._x = 0
            self._y += 8

    def panel(self, title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries",
              width: int = 8, description: str = "", stack: bool = False) -> None:
        if self._x + width > 24:
            self._newline()
        panel: dict[str, Any] = {
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": description,
            "datasource": DS, "gridPos": {"h": 8, "w": width, "x": self._x, "y": self._y},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                        for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        }
        if kind == "timeseries" and stack:
            panel["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 30}
        if kind == "stat":
            panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
        self.panels.append(panel)
        self._x += width

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": ["sluice", *self.tags],
            "editable": True, "schemaVersion": 39, "version": 1, "refresh": "10s", "timezone": "",
            "time": {"from": "now-1h", "to": "now"}, "graphTooltip": 1,
            "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                     "query": "prometheus", "current": {}, "hide": 0}]},
            "annotations": {"list": []}, "links": [], "panels": self.panels,
        }


def quantile(q: float, bucket: str, by: str = "le", where: str = "") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({bucket}{where}[{RATE}])))"


def edge() -> Board:
    b = Board("sluice-edge", "sluice / edge", "The edge Envoys: requests, rate limits, upstream latencies, "
              "generative latencies, backend health.", ["edge", "envoy"])
    edge_hcm = '{envoy_http_conn_manager_prefix="edge"}'
    b.row("Requests")
    b.panel("Requests per second", [(f"sum(rate(envoy_http_downstream_rq_total{edge_hcm}[{RATE}]))", "requests")],
            "reqps")
    b.panel("Responses by class", [(f"sum by (envoy_response_code_class) (rate(envoy_http_downstream_rq_xx{edge_hcm}[{RATE}]))",
                                    "{{envoy_response_code_class}}xx")], "reqps", stack=True)
    b.panel("Edge latency p50 / p99",
            [(quantile(0.5, "envoy_http_downstream_rq_time_bucket", where=edge_hcm), "p50"),
             (quantile(0.99, "envoy_http_downstream_rq_time_bucket", where=edge_hcm), "p99")], "ms")
    b.row("Rate limits (the ratelimit WASM filter)")
    b.panel("Admitted per policy", [(f"sum by (policy) (rate(sluice_ratelimit_allowed[{RATE}]))", "{{policy}}")], "reqps")
    b.panel("Limited per policy (429)", [(f"sum by (policy) (rate(sluice_ratelimit_limited[{RATE}]))", "{{policy}}")],
            "reqps")
    b.panel("Would be limited (shadow)",
            [(f"sum by (policy) (rate(sluice_ratelimit_shadow_limited[{RATE}]))", "{{policy}}")], "reqps")
    b.panel("Limited share", [(f"sum by (policy) (rate(sluice_ratelimit_limited[{RATE}])) / "
                               f"sum by (policy) (rate(sluice_ratelimit_requests[{RATE}]))", "{{policy}}")], "percentunit",
            width=12)
    b.panel("Requests seen by each policy", [(f"sum by (policy) (rate(sluice_ratelimit_requests[{RATE}]))", "{{policy}}")],
            "reqps", width=12)
    b.row("Backends as the edge sees them")
    b.panel("Upstream requests per backend",
            [(f"sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_total[{RATE}]))", "{{envoy_cluster_name}}")],
            "reqps", stack=True)
    b.panel("Upstream 5xx share per backend",
            [(f'sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5"}}[{RATE}])) / '
              f"sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_xx[{RATE}]))", "{{envoy_cluster_name}}")],
            "percentunit")
    b.panel("Upstream p99 per backend",
            [(quantile(0.99, "envoy_cluster_upstream_rq_time_bucket", "le, envoy_cluster_name"), "{{envoy_cluster_name}}")],
            "ms")
    b.panel("Healthy endpoints per backend",
            [("sum by (envoy_cluster_name) (envoy_cluster_membership_healthy)", "{{envoy_cluster_name}} healthy"),
             ("sum by (envoy_cluster_name) (envoy_cluster_membership_total)", "{{envoy_cluster_name}} total")])
    b.panel("Outlier ejections (active)",
            [("sum by (envoy_cluster_name) (envoy_cluster_outlier_detection_ejections_active)", "{{envoy_cluster_name}}")])
    b.panel("Retries", [(f"sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_retry[{RATE}]))",
                         "{{envoy_cluster_name}}")], "reqps")
    b.row("Generative (GenAI) latencies")
    b.panel("Time to first token p50 / p99",
            [(quantile(0.5, "vllm:time_to_first_token_seconds_bucket", "le, model_name"), "{{model_name}} p50"),
             (quantile(0.99, "vllm:time_to_first_token_seconds_bucket", "le, model_name"), "{{model_name}} p99")], "s",
            description="Measured by the generative backends (vLLM's metric names).")
    b.panel("Inter-token latency p50 / p99",
            [(quantile(0.5, "vllm:inter_token_latency_seconds_bucket", "le, model_name"), "{{model_name}} p50"),
             (quantile(0.99, "vllm:inter_token_latency_seconds_bucket", "le, model_name"), "{{model_name}} p99")], "s")
    b.panel("Request latency p99 (edge upstream vs backend end-to-end)",
            [(quantile(0.99, "vllm:e2e_request_latency_seconds_bucket", "le, model_name"), "{{model_name}} backend"),
             (f"{quantile(0.99, 'envoy_cluster_upstream_rq_time_bucket', 'le, envoy_cluster_name')} / 1000",
              "{{envoy_cluster_name}} at the edge")], "s")
    b.panel("Tokens per second", [(f"sum by (model_name) (rate(vllm:generation_tokens_total[{RATE}]))", "{{model_name}} out"),
                                  (f"sum by (model_name) (rate(vllm:prompt_tokens_total[{RATE}]))", "{{model_name}} in")],
            "short", width=12)
    return b


def controlplane() -> Board:
    b = Board("sluice-controlplane", "sluice / control plane", "xDS pushes, ACKs and NACKs, convergence, "
              "the published revision, background loops.", ["controlplane", "xds"])
    b.row("Policy")
    b.panel("Published revision", [("max(sluice_published_revision)", "revision")], kind="stat", width=6)
    b.panel("NACKs in the last hour", [("sum(increase(sluice_xds_nacks_total[1h]))", "NACKs")], kind="stat", width=6)
    b.panel("Convergence p99 (last 15 min)",
            [("histogram_quantile(0.99, sum by (le) (rate(sluice_convergence_seconds_bucket[15m])))", "p99")], "s",
            kind="stat", width=6)
    b.panel("Background loops up", [("min(sluice_loop_up)", "all up")], kind="stat", width=6)
    b.row("xDS")
    b.panel("Pushes per type", [(f"sum by (type) (rate(sluice_xds_pushes_total[{RATE}]))", "{{type}}")], "ops",
            stack=True)
    b.panel("ACKs per type", [(f"sum by (type) (rate(sluice_xds_acks_total[{RATE}]))", "{{type}}")], "ops")
    b.panel("NACKs per type", [(f"sum by (type) (rate(sluice_xds_nacks_total[{RATE}]))", "{{type}}")], "ops",
            description="A NACK means an Envoy refused a push: the console's overview names the proxy and message.")
    b.panel("Convergence p50 / p99 (revision written → last proxy ACKed)",
            [(quantile(0.5, "sluice_convergence_seconds_bucket"), "p50"),
             (quantile(0.99, "sluice_convergence_seconds_bucket"), "p99")], "s", width=12)
    b.panel("Resources encoded", [(f"sum by (type) (rate(sluice_xds_encodes_total[{RATE}]))", "{{type}}")], "ops",
            width=12)
    b.row("Loops and proxies")
    b.panel("Loop restarts", [(f"sum by (loop) (increase(sluice_loop_restarts_total[{RATE}]))", "{{loop}}")], width=12)
    b.panel("Envoys connected to the control plane (as Envoys report it)",
            [("sum(envoy_control_plane_connected_state)", "connected")], width=12)
    return b


def backends() -> Board:
    b = Board("sluice-backends", "sluice / backends", "The inference backends: KServe v2 (Triton's metric names) "
              "and generative (vLLM's metric names).", ["backend", "inference"])
    b.row("Tensor models (KServe v2)")
    b.panel("Successful inferences per second",
            [(f"sum by (model, version) (rate(nv_inference_request_success[{RATE}]))", "{{model}} v{{version}}")],
            "reqps")
    b.panel("Failures per second", [(f"sum by (model, reason) (rate(nv_inference_request_failure[{RATE}]))",
                                     "{{model}} {{reason}}")], "reqps")
    b.panel("Queue (requests waiting)", [("sum by (model, version) (nv_inference_pending_request_count)",
                                          "{{model}} v{{version}}")])
    b.panel("Mean time in queue per request",
            [(f"sum by (model) (rate(nv_inference_queue_duration_us[{RATE}])) / "
              f"sum by (model) (rate(nv_inference_request_success[{RATE}]))", "{{model}}")], "µs")
    b.panel("Mean model run per batch",
            [(f"sum by (model) (rate(nv_inference_compute_infer_duration_us[{RATE}])) / "
              f"sum by (model) (rate(nv_inference_exec_count[{RATE}]))", "{{model}}")], "µs")
    b.panel("Batch size p50 / p99 (rows per run)",
            [(quantile(0.5, "nv_inference_batch_size_bucket", "le, model"), "{{model}} p50"),
             (quantile(0.99, "nv_inference_batch_size_bucket", "le, model"), "{{model}} p99")])
    b.panel("Mean request time in the server",
            [(f"sum by (model) (rate(nv_inference_request_duration_us[{RATE}])) / "
              f"sum by (model) (rate(nv_inference_request_success[{RATE}]))", "{{model}}")], "µs", width=12)
    b.panel("Response cache hits / misses",
            [(f"sum by (model) (rate(nv_cache_num_hits_per_model[{RATE}]))", "{{model}} hits"),
             (f"sum by (model) (rate(nv_cache_num_misses_per_model[{RATE}]))", "{{model}} misses")], "ops", width=12)
    b.row("Generative models (vLLM names)")
    b.panel("Running / waiting requests",
            [("sum by (model_name) (vllm:num_requests_running)", "{{model_name}} running"),
             ("sum by (model_name) (vllm:num_requests_waiting)", "{{model_name}} waiting")])
    b.panel("KV-cache use", [("max by (model_name) (vllm:kv_cache_usage_perc)", "{{model_name}}")], "percentunit")
    b.panel("Prefix-cache hit rate",
            [(f"sum by (model_name) (rate(vllm:prefix_cache_hits_total[{RATE}])) / "
              f"sum by (model_name) (rate(vllm:prefix_cache_queries_total[{RATE}]))", "{{model_name}}")], "percentunit")
    b.panel("Queue time p99 (before the first prefill)",
            [(quantile(0.99, "vllm:request_queue_time_seconds_bucket", "le, model_name"), "{{model_name}}")], "s")
    b.panel("Time to first token p99",
            [(quantile(0.99, "vllm:time_to_first_token_seconds_bucket", "le, model_name"), "{{model_name}}")], "s")
    b.panel("Finished requests by reason",
            [(f"sum by (model_name, finished_reason) (rate(vllm:request_success_total[{RATE}]))",
              "{{model_name}} {{finished_reason}}")], "reqps")
    b.panel("Preemptions (KV cache full)", [(f"sum by (model_name) (rate(vllm:num_preemptions_total[{RATE}]))",
                                             "{{model_name}}")], "ops", width=12)
    b.panel("Tokens per second", [(f"sum by (model_name) (rate(vllm:generation_tokens_total[{RATE}]))", "{{model_name}}")],
            "short", width=12)
    return b


BOARDS = {"edge.json": edge, "controlplane.json": controlplane, "backends.json": backends}


def rendered() -> dict[str, str]:
    return {name: json.dumps(make().json(), indent=2) + "\n" for name, make in BOARDS.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, text in rendered().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python deploy/grafana/dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The Grafana dashboards: current with their generator, wired into compose and the Kubernetes
overlays, and every query's metric names exported by a live mesh (control plane /metrics, edge
Envoy /stats/prometheus, classifier and generative backends' /metrics), so a renamed metric
breaks the build, not the dashboard."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import PYTHON, ROOT, Backend, ControlPlane, Envoy, http, wait_until
from policies import demo_policy

DASHBOARDS = ROOT / "deploy/grafana/dashboards"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, label names or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in PROMQL_WORDS:
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # part of a number such as 1e3
        names.add(m.group(0))
    return names


def exported(text: str) -> set[str]:
    """Series names in a Prometheus text exposition, with the samples every declared family has
    (a labelled counter no one incremented yet is declared but has no sample)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= {"counter": {name, f"{name}_total"}, "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
                      "summary": {name, f"{name}_sum", f"{name}_count"}}.get(kind.strip(), {name})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_dashboards_are_what_their_generator_writes() -> None:
    result = subprocess.run([PYTHON, "deploy/grafana/dashboards.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert set(dashboards()) == {"edge.json", "controlplane.json", "backends.json"}
    for board in dashboards().values():
        assert board["uid"].startswith("sluice-") and expressions(board)
        assert all(t["datasource"]["uid"] == "${datasource}" for p in board["panels"] for t in p.get("targets", []))


def test_the_metric_name_reader() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, model_name) (rate(vllm:time_to_first_token_seconds_bucket'
            '{model_name="x"}[5m]))) / sum(rate(envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}[1m])) / 1e3')
    assert metric_names(expr) == {"vllm:time_to_first_token_seconds_bucket", "envoy_cluster_upstream_rq_xx"}
    assert exported("# TYPE a counter\n# TYPE h histogram\nb{x=\"1\"} 2\n") == {"a", "a_total", "h_bucket", "h_sum",
                                                                                 "h_count", "b"}


def test_compose_and_kubernetes_install_the_dashboards() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    grafana = compose["grafana"]
    provisioning = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/sluice.yaml").read_text())
    folder = provisioning["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    for name in dashboards():
        assert mounts[f"./deploy/grafana/dashboards/{name}"] == f"{folder}/{name}"
    assert "monitoring" in grafana["profiles"] and "monitoring" in compose["prometheus"]["profiles"]
    prometheus = yaml.safe_load((ROOT / "deploy/grafana/prometheus.yaml").read_text())
    jobs = {j["job_name"] for j in prometheus["scrape_configs"]}
    assert {"controlplane", "edge", "backends"} <= jobs
    # Kubernetes: ConfigMaps labelled for the Grafana chart's dashboard sidecar, in both overlays.
    kust = yaml.safe_load((ROOT / "deploy/grafana/kustomization.yaml").read_text())
    (generator,) = kust["configMapGenerator"]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(generator["files"]) == sorted(f"dashboards/{n}" for n in dashboards())
    for overlay in ("cpu", "gpu"):
        out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy/k8s/overlays" / overlay)],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0 and "kubectl" in out.stderr and "not found" in out.stderr:
            pytest.skip("kubectl is not installed")
        assert out.returncode == 0, out.stderr
        maps = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "ConfigMap"
                and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        assert sorted(k for m in maps for k in m["data"]) == sorted(dashboards())


@pytest.fixture(scope="module")
def live_mesh(tmp_path_factory: pytest.TempPathFactory, model_repository: Path,
              backends: dict[int, Backend]) -> Iterator[dict[str, str]]:
    workdir = tmp_path_factory.mktemp("dashboards")
    cp = ControlPlane.start(workdir)
    llm = None
    edge = None
    try:
        llm = Backend.start(workdir, model_repository, "tiny-llama")
        docs = [*demo_policy(backends[1].port, backends[2].port),
                {"kind": "Backend", "name": "tiny-llama", "spec": {"endpoints": [{"address": "127.0.0.1", "port": llm.port}]}},
                {"kind": "Service", "name": "llm", "spec": {"hosts": ["llm.example"], "routes": [
                    {"name": "openai", "match": {"prefix": "/v1/"}, "split": [{"backend": "tiny-llama"}]}]}},
                {"kind": "RateLimit", "name": "per-client", "spec": {"service": "classifier", "rate": 1000, "burst": 1000}}]
        status, body = cp.apply(*docs)
        assert status == 200, body
        edge = Envoy.start(workdir, cp, node_id="edge-dashboards")
        cp.wait_converged(edge.node_id)
        x = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        for _ in range(3):
            assert http("POST", f"{edge.url}/v2/models/classifier/infer", x)[0] == 200
        chat = {"model": "tiny-llama", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        status, _, raw = http("POST", f"{edge.url}/v1/chat/completions", chat, {"Host": "llm.example"}, timeout=60)
        assert status == 200, raw
        yield {
            "control plane /metrics": f"{cp.url}/metrics",
            "edge /stats/prometheus": f"{edge.admin}/stats/prometheus",
            "classifier backend /metrics": f"{backends[1].url}/metrics",
            "generative backend /metrics": f"{llm.url}/metrics",
        }
    finally:
        if edge is not None:
            edge.proc.stop()
        if llm is not None:
            llm.proc.stop()
        cp.proc.stop()


def test_every_query_names_metrics_the_live_mesh_exports(live_mesh: dict[str, str]) -> None:
    def scrape() -> set[str]:
        names: set[str] = set()
        for where, url in live_mesh.items():
            status, _, body = http("GET", url)
            assert status == 200, f"{where}: {status}"
            names |= exported(body.decode())
        return names

    # The edge's histograms appear once their first sample is flushed into them.
    def with_histograms() -> set[str] | None:
        names = scrape()
        return names if "envoy_cluster_upstream_rq_time_bucket" in names else None

    names = wait_until(with_histograms, 30, what="the edge's latency histograms")
    missing = {}
    for file, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                absent = metric_names(target["expr"]) - names
                if absent:
                    missing[f"{file}: {panel['title']}"] = sorted(absent)
    assert missing == {}
    used = {n for board in dashboards().values() for e in expressions(board) for n in metric_names(e)}
    assert len(used) >= 40  # edge, control plane, tensor and generative backends are all covered

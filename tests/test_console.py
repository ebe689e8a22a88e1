"""The web console in a real browser (the system's Chromium, driven by Playwright) against a real
mesh: control plane, edge Envoy and two classifier backends, as `make up` runs them.

Pages render (a screenshot of each is saved: build/console/, or docs/images/console/ with
SLUICE_SCREENSHOTS=docs, which is how the docs' pictures are made); a weight change made with
the CLI shows on the open page within 2 s without a reload; an operator pauses and resumes a
canary from the page; a viewer sees no action buttons and its forged POST gets 403; a rollback
from the history page changes what Envoy serves.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import ARGS, chromium_or_skip
from harness import PYTHON, ROOT, Backend, ControlPlane, Envoy, http, wait_until
from policies import demo_policy

X = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}
SHOTS = ROOT / ("docs/images/console" if os.environ.get("SLUICE_SCREENSHOTS") == "docs" else "build/console")
WIDTH, HEIGHT = 1280, 860


@dataclass
class Mesh:
    cp: ControlPlane
    edge: Envoy
    v1: Backend
    v2: Backend
    tokens: dict[str, str]

    def get(self, path: str, role: str = "operator") -> Any:
        status, _, body = http("GET", self.cp.url + path, headers=self.auth(role))
        assert status == 200, body
        return json.loads(body)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def served_version(self) -> str:
        status, _, raw = http("POST", f"{self.edge.url}/v2/models/classifier/infer", X)
        assert status == 200, raw
        return str(json.loads(raw)["model_version"])

    def sluice(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SLUICE_SERVER": self.cp.url, "SLUICE_TOKEN": self.tokens["operator"]}
        result = subprocess.run([PYTHON, "-m", "sluice", *args], input=stdin, capture_output=True, text=True,
                                cwd=ROOT, env=env, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result


def mesh_policy(v1: int, v2: int) -> list[dict[str, Any]]:
    return [
        *demo_policy(v1, v2),
        {"kind": "Service", "name": "ab", "spec": {"hosts": ["ab.example"], "routes": [{
            "name": "infer", "match": {"prefix": "/v2/models/classifier"},
            "split": [{"backend": "classifier-v1", "weight": 100}, {"backend": "classifier-v2", "weight": 0}]}]}},
        # A canary that stays on its first step for the whole test (an hour per window).
        {"kind": "Canary", "name": "ab-release", "spec": {
            "service": "ab", "route": "infer", "stable": "classifier-v1", "canary": "classifier-v2",
            "steps": [10, 50], "interval_s": 3600}},
        {"kind": "RateLimit", "name": "per-client", "spec": {"service": "classifier", "rate": 1000, "burst": 1000}},
    ]


def llm_policy(port: int) -> list[dict[str, Any]]:
    return [
        {"kind": "Backend", "name": "tiny-llama", "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}},
        {"kind": "Service", "name": "llm", "spec": {"hosts": ["llm.example"], "routes": [
            {"name": "openai", "match": {"prefix": "/v1/"}, "split": [{"backend": "tiny-llama"}]}]}},
    ]


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="module")
def mesh(chromium: str, tmp_path_factory: pytest.TempPathFactory, backends: dict[int, Backend],
         model_repository: Path) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("console")
    cp = ControlPlane.start(workdir)
    llm = Backend.start(workdir, model_repository, "tiny-llama")
    try:
        status, body = cp.apply(*mesh_policy(backends[1].port, backends[2].port), *llm_policy(llm.port))
        assert status == 200, body
        edge = Envoy.start(workdir, cp, node_id="edge-console")
        try:
            cp.wait_converged(edge.node_id)
            # Tokens: the first (admin) while the API is still open on loopback, then one per role.
            status, _, raw = http("POST", f"{cp.url}/api/v1/tokens", {"name": "root", "role": "admin"})
            assert status == 201, raw
            tokens = {"admin": json.loads(raw)["token"]}
            for role in ("operator", "viewer"):
                status, _, raw = http("POST", f"{cp.url}/api/v1/tokens", {"name": f"console-{role}", "role": role},
                                      {"Authorization": f"Bearer {tokens['admin']}"})
                assert status == 201, raw
                tokens[role] = json.loads(raw)["token"]
            mesh = Mesh(cp, edge, backends[1], backends[2], tokens)
            for _ in range(5):  # some traffic for the counters
                assert mesh.served_version() == "1"
            yield mesh
        finally:
            edge.proc.stop()
    finally:
        llm.proc.stop()
        cp.proc.stop()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def signed_in(browser: Any, mesh: Mesh, role: str) -> Any:
    """A page whose tab holds the role's token (as if signed in), with console errors collected."""
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    context.add_init_script(f"sessionStorage.setItem('sluice.token', {json.dumps(mesh.tokens[role])});")
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    return page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def wait_canary(mesh: Mesh, state: str) -> None:
    wait_until(lambda: mesh.get("/api/v1/canaries/ab-release/status")["status"]["state"] == state, 30,
               what=f"canary {state}")


def test_static_pages_are_public_and_the_summaries_need_a_token(mesh: Mesh) -> None:
    status, headers, body = http("GET", f"{mesh.cp.url}/ui/")
    assert status == 200 and b"sluice console" in body
    assert http("GET", f"{mesh.cp.url}/ui/assets/app.js")[0] == 200
    assert http("GET", f"{mesh.cp.url}/ui/api/overview")[0] == 401
    assert http("GET", f"{mesh.cp.url}/ui/api/overview", headers=mesh.auth("viewer"))[0] == 200
    session = mesh.get("/ui/api/session", "viewer")
    assert session == {"name": "console-viewer", "role": "viewer", "can_act": False, "tokens": True}


def test_every_page_renders(browser: Any, mesh: Mesh) -> None:
    wait_canary(mesh, "progressing")
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{mesh.cp.url}/ui/")
    # Tokens are in force: the console asks for one.
    page.wait_for_selector("#login[open]")
    shot(page, "sign-in")
    page.fill("#token", mesh.tokens["operator"])
    page.click("#login-submit")
    page.wait_for_selector("#proxies tr[data-node='edge-console']")
    page.wait_for_selector("svg text.weight")  # the mesh picture
    assert "console-operator" in page.inner_text("#who")
    row = page.inner_text("#proxies tr[data-node='edge-console']")
    assert "current" in row and "lds" in row
    shot(page, "overview")

    page.click("#nav a[data-page='routes']")
    page.wait_for_selector("#routes tr[data-route='classifier/infer'] .split")
    assert "classifier-v1: 100" in page.inner_text("#routes tr[data-route='classifier/infer'] .weights")
    shot(page, "routes")

    page.click("#nav a[data-page='canaries']")
    page.wait_for_selector("#canaries tr[data-canary='ab-release']")
    assert page.inner_text("#canaries tr[data-canary='ab-release'] .stage") == "weighted"  # no shadow or A/B stage
    shot(page, "canaries")
    page.click("#canaries a[href='#/canary/ab-release']")
    page.wait_for_selector("#canary-state")
    assert page.inner_text("#canary-state") == "progressing"
    assert page.inner_text("#canary-stage") == "weighted"
    page.wait_for_selector("[data-action='pause']")
    shot(page, "canary")

    for _ in range(10):
        mesh.served_version()
    page.click("#nav a[data-page='limits']")
    page.wait_for_selector("#limits tr[data-limit='per-client']")
    wait_until(lambda: int(page.inner_text("#limits tr[data-limit='per-client'] td:nth-child(7)").replace(",", "")) >= 15,
               15, what="the rate-limit counters")
    shot(page, "limits")

    page.click("#nav a[data-page='history']")
    page.wait_for_selector("#revisions tr[data-revision]")
    page.wait_for_selector("#diff h2")
    shot(page, "history")

    page.click("#nav a[data-page='backends']")
    page.wait_for_selector("#backends tr[data-backend='classifier-v1']")
    wait_until(lambda: "1/1 healthy" in page.inner_text("#backends tr[data-backend='classifier-v1']"), 15,
               what="backend health")
    assert "classifier" in page.inner_text("#backends tr[data-backend='classifier-v1']")
    # The generative backend reports its load (vLLM's names): running, waiting, KV-cache use.
    llm_row = page.inner_text("#backends tr[data-backend='tiny-llama']")
    assert "tiny-llama" in llm_row and "%" in llm_row
    shot(page, "backends")
    assert errors == []
    context.close()


def test_a_weight_change_from_the_cli_shows_within_2s_without_reload(browser: Any, mesh: Mesh) -> None:
    page = signed_in(browser, mesh, "operator")
    page.goto(f"{mesh.cp.url}/ui/#/routes")
    weights = "#routes tr[data-route='classifier/infer'] .weights"
    page.wait_for_selector(weights)
    before = page.inner_text(weights)
    page.evaluate("window.__same_page = true")
    new = 30 if "classifier-v1: 100" in before else 100
    mesh.sluice("apply", "-f", "-", stdin=textwrap.dedent(f"""\
        kind: Service
        name: classifier
        spec:
          routes:
            - name: infer
              match: {{ prefix: /v2/models/classifier }}
              split:
                - {{ backend: classifier-v1, weight: {new} }}
                - {{ backend: classifier-v2, weight: {100 - new} }}
        """))
    # The bound the console promises (it polls once a second), measured from the CLI's return.
    page.wait_for_function(f"document.querySelector(\"{weights}\").innerText.includes('classifier-v1: {new}')",
                           timeout=2000)
    assert page.evaluate("window.__same_page") is True  # no reload happened
    assert page.errors == []
    page.context.close()


def test_an_operator_pauses_and_resumes_a_canary_from_the_page(browser: Any, mesh: Mesh) -> None:
    wait_canary(mesh, "progressing")
    page = signed_in(browser, mesh, "operator")
    page.goto(f"{mesh.cp.url}/ui/#/canary/ab-release")
    page.wait_for_selector("[data-action='pause']:not([disabled])")
    page.click("[data-action='pause']")
    page.wait_for_function("document.querySelector('#canary-state').innerText === 'paused'", timeout=10_000)
    assert mesh.get("/api/v1/canaries/ab-release/status")["status"]["state"] == "paused"
    assert "pause: now paused" in page.inner_text(".flash")
    shot(page, "canary-paused")
    page.click("[data-action='resume']")
    page.wait_for_function("document.querySelector('#canary-state').innerText === 'progressing'", timeout=10_000)
    status = mesh.get("/api/v1/canaries/ab-release/status")["status"]
    assert status["state"] == "progressing"
    assert [e["message"] for e in status["events"]][-2:] == ["paused by an operator", "resumed by an operator"]
    audit = mesh.get("/api/v1/audit?limit=5", "admin")["entries"]
    assert any(e.get("actor") == "console-operator" for e in audit)
    assert page.errors == []
    page.context.close()


def test_a_viewer_sees_no_actions_and_a_forged_post_is_refused(browser: Any, mesh: Mesh) -> None:
    page = signed_in(browser, mesh, "viewer")
    page.goto(f"{mesh.cp.url}/ui/#/canary/ab-release")
    page.wait_for_selector("#canary-state")
    assert page.query_selector_all("[data-action]") == []
    assert "viewer" in page.inner_text("#who")
    shot(page, "canary-viewer")
    page.goto(f"{mesh.cp.url}/ui/#/history")
    page.wait_for_selector("#revisions tr[data-revision]")
    assert page.query_selector_all("[data-rollback]") == []
    revision = mesh.cp.revision()
    forged = page.evaluate("""async () => {
        const headers = {Authorization: 'Bearer ' + sessionStorage.getItem('sluice.token')};
        const pause = await fetch('/api/v1/canaries/ab-release/pause', {method: 'POST', headers});
        const rollback = await fetch('/api/v1/revisions/1/rollback', {method: 'POST', headers});
        return [pause.status, rollback.status];
    }""")
    assert forged == [403, 403]
    assert mesh.cp.revision() == revision  # nothing changed
    assert page.errors == []
    page.context.close()


def test_a_rollback_from_the_history_page_changes_what_envoy_serves(browser: Any, mesh: Mesh) -> None:
    def apply_weights(v1: int) -> int:
        doc = {"kind": "Service", "name": "classifier", "spec": {"routes": [{
            "name": "infer", "match": {"prefix": "/v2/models/classifier"},
            "split": [{"backend": "classifier-v1", "weight": v1}, {"backend": "classifier-v2", "weight": 100 - v1}]}]}}
        status, _, raw = http("POST", f"{mesh.cp.url}/api/v1/apply", {"documents": [doc]}, mesh.auth("operator"))
        assert status == 200, raw
        return int(json.loads(raw)["revision"])

    good = apply_weights(100)
    bad = apply_weights(0)
    wait_until(lambda: all(mesh.served_version() == "2" for _ in range(5)), 30, what="Envoy serving version 2")

    page = signed_in(browser, mesh, "operator")
    page.goto(f"{mesh.cp.url}/ui/#/history")
    page.wait_for_selector(f"[data-rollback='{good}']")
    page.click(f"[data-rollback='{good}']")
    page.wait_for_selector("#confirm[open]")
    assert f"revision {good}" in page.inner_text("#confirm-title")
    shot(page, "rollback-confirm")
    page.click("#confirm-ok")
    page.wait_for_function("document.querySelector('.flash').innerText.includes('rolled back')", timeout=10_000)
    assert mesh.cp.revision() == bad + 1
    wait_until(lambda: all(mesh.served_version() == "1" for _ in range(10)), 30, what="Envoy serving version 1 again")
    revisions = mesh.get("/api/v1/revisions?limit=1")["revisions"]
    assert revisions[0]["message"] == f"rollback to revision {good}"
    assert revisions[0]["actor"] == "console-operator"
    assert page.errors == []
    page.context.close()


def test_the_summaries_stay_bounded_at_1000_routes(mesh: Mesh, browser: Any) -> None:
    routes = [{"name": f"r{i}", "match": {"prefix": f"/many/{i}"},
               "split": [{"backend": "classifier-v1", "weight": 1 + i % 7}, {"backend": "classifier-v2", "weight": 1}]}
              for i in range(1000)]
    doc = {"kind": "Service", "name": "many", "spec": {"hosts": ["many.example"], "routes": routes}}
    status, _, raw = http("POST", f"{mesh.cp.url}/api/v1/apply", {"documents": [doc]}, mesh.auth("operator"))
    assert status == 200, raw
    try:
        data = mesh.get("/ui/api/routes?q=many/", "viewer")
        assert data["total"] == 1000 and len(data["items"]) == 25 and data["pages"] == 40
        overview = mesh.get("/ui/api/overview", "viewer")
        assert len(overview["mesh"]["items"]) <= 12 and overview["mesh"]["total"] >= 1000
        page = signed_in(browser, mesh, "viewer")
        page.goto(f"{mesh.cp.url}/ui/#/routes")
        page.wait_for_selector("#routes tr[data-route]")
        page.fill("input[data-filter]", "many/r99")
        page.wait_for_selector("#routes tr[data-route='many/r999']")
        assert len(page.query_selector_all("#routes tr[data-route]")) <= 25
        page.fill("input[data-filter]", "")
        page.wait_for_selector("[data-pager='page'][data-to='1']:not([disabled])")
        page.click("[data-pager='page'][data-to='1']")
        page.wait_for_function("document.querySelector('.pager').innerText.startsWith('page 2 of')", timeout=10_000)
        assert len(page.query_selector_all("#routes tr[data-route]")) == 25
        assert page.errors == []
        page.context.close()
    finally:
        status, _, raw = http("DELETE", f"{mesh.cp.url}/api/v1/services/many", headers=mesh.auth("operator"))
        assert status == 200, raw

"""Admin API security against real control planes: roles, missing/wrong/expired/revoked tokens,
the opt-in default, the CLI's token handling, HTTPS, and mutual TLS for xDS with a real Envoy."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import PYTHON, ROOT, ControlPlane, Proc, free_port, http, wait_until
from policies import demo_policy


def sluice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "sluice", *args], capture_output=True, text=True, cwd=ROOT, timeout=30,
                          env={**{k: v for k, v in os.environ.items() if k != "SLUICE_TOKEN"}, **(env or {})})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_token(cp: ControlPlane, admin: str, name: str, role: str, **extra: Any) -> str:
    status, _, body = http("POST", f"{cp.url}/api/v1/tokens", {"name": name, "role": role, **extra}, bearer(admin))
    assert status == 201, body
    return str(json.loads(body)["token"])


def test_open_on_loopback_until_the_first_token(tmp_path: Path) -> None:
    cp = ControlPlane.start(tmp_path, admin_port=free_port(), args=("--admin-host", "0.0.0.0"))
    try:
        assert cp.apply(*demo_policy(8001, 8002))[0] == 200  # make up: no ceremony on localhost
        outside = _non_loopback_address()
        if outside is not None:  # the same API, reached from another address, is closed
            status, headers, body = http("GET", f"http://{outside}:{cp.admin_port}/api/v1/policy")
            assert status == 401 and "only loopback clients are served" in json.loads(body)["error"]
            assert headers["www-authenticate"].startswith("Bearer")

        # The bootstrap: an admin token written straight into the store, the control plane running.
        result = sluice("token", "create", "--role", "admin", "--name", "root", "--store", cp.store)
        assert result.returncode == 0, result.stderr
        admin = result.stdout.strip()
        assert admin.startswith("sluice_") and "shown only now" in result.stderr
        wait_until(lambda: http("GET", f"{cp.url}/api/v1/policy")[0] == 401, 5, what="tokens in force")
        assert http("GET", f"{cp.url}/api/v1/policy", headers=bearer(admin))[0] == 200
        if outside is not None:
            assert http("GET", f"http://{outside}:{cp.admin_port}/api/v1/policy", headers=bearer(admin))[0] == 200
        # Public: liveness and the API's own description.
        assert http("GET", f"{cp.url}/healthz")[0] == 200
        assert http("GET", f"{cp.url}/api/v1/openapi.json")[0] == 200
    finally:
        cp.proc.stop()
    assert admin not in cp.proc.log.read_text()


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def test_roles_and_bad_tokens(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'sluice.db'}"
    admin = sluice("token", "create", "--role", "admin", "--name", "root", "--store", store).stdout.strip()
    cp = ControlPlane.start(tmp_path, store=store)
    try:
        viewer = create_token(cp, admin, "dashboards", "viewer")
        operator = create_token(cp, admin, "deployer", "operator")
        brief = create_token(cp, admin, "brief", "viewer", expires_in_s=1.5)
        created = time.monotonic()
        policy, put = f"{cp.url}/api/v1/policy", f"{cp.url}/api/v1/backends/classifier-v1"
        backend = demo_policy(8001, 8002)[0]

        def status(method: str, url: str, token: str | None, body: Any = None) -> int:
            return http(method, url, body, {} if token is None else bearer(token))[0]

        # viewer reads; operator also changes policy; only admin manages tokens.
        assert [status("GET", policy, t) for t in (viewer, operator, admin)] == [200, 200, 200]
        assert [status("PUT", put, t, backend) for t in (viewer, operator, admin)] == [403, 200, 200]
        assert [status("GET", f"{cp.url}/api/v1/tokens", t) for t in (viewer, operator, admin)] == [403, 403, 200]
        assert status("POST", f"{cp.url}/api/v1/apply?dry_run=true", viewer, {"documents": [backend]}) == 403
        assert status("POST", f"{cp.url}/api/v1/revisions/0/rollback", viewer) == 403
        assert status("DELETE", f"{cp.url}/api/v1/tokens/dashboards", operator) == 403
        code, _, body = http("PUT", put, backend, bearer(viewer))
        assert json.loads(body)["error"] == "token 'dashboards' has role viewer; this needs operator"

        # Missing, malformed, wrong.
        for headers, message in (({}, "missing bearer token"), ({"Authorization": f"Basic {admin}"}, "missing bearer"),
                                 (bearer("sluice_" + "x" * 43), "unknown or revoked token")):
            code, got, body = http("GET", policy, headers=headers)
            assert code == 401 and message in json.loads(body)["error"] and "Bearer" in got["www-authenticate"]

        # Every write is attributed to the token that made it, whatever the client calls itself.
        moved = {"spec": {"endpoints": [{"address": "127.0.0.1", "port": 9009}]}}
        assert http("PUT", put, moved, {**bearer(operator), "X-Sluice-Actor": "someone-else"})[0] == 200
        entries = get_json_auth(f"{cp.url}/api/v1/audit", viewer)["entries"]
        assert (entries[0]["actor"], entries[0]["revision"]) == ("deployer", 2)
        assert [(e["action"], e["actor"]) for e in entries if e["action"] == "token.create"][:1] == [
            ("token.create", "root")]
        listed = get_json_auth(f"{cp.url}/api/v1/tokens", admin)["tokens"]
        assert {t["name"]: t["role"] for t in listed} == {
            "root": "admin", "dashboards": "viewer", "deployer": "operator", "brief": "viewer"}
        assert all("digest" not in t and "token" not in t for t in listed)

        # Revoked: refused at once. The last admin token cannot be revoked while others exist.
        assert status("DELETE", f"{cp.url}/api/v1/tokens/deployer", admin) == 200
        assert status("GET", policy, operator) == 401
        assert status("DELETE", f"{cp.url}/api/v1/tokens/root", admin) == 409
        assert status("DELETE", f"{cp.url}/api/v1/tokens/nope", admin) == 404
        assert status("POST", f"{cp.url}/api/v1/tokens", admin, {"name": "root", "role": "viewer"}) == 409
        assert status("POST", f"{cp.url}/api/v1/tokens", admin, {"name": "x", "role": "root"}) == 422
        assert status("POST", f"{cp.url}/api/v1/tokens", admin, {"name": "x", "role": "viewer",
                                                                  "expires_in_s": -1}) == 422

        # Expired.
        assert status("GET", policy, brief) == 200
        time.sleep(max(0.0, 1.6 - (time.monotonic() - created)))
        code, _, body = http("GET", policy, headers=bearer(brief))
        assert code == 401 and "token 'brief' expired at" in json.loads(body)["error"]
    finally:
        cp.proc.stop()
    log = cp.proc.log.read_text()
    assert all(secret not in log for secret in (admin, viewer, operator, brief))
    assert "sluice_" not in log  # no token secret, in any form, reaches the log


def get_json_auth(url: str, token: str) -> Any:
    status, _, body = http("GET", url, headers=bearer(token))
    assert status == 200, body
    return json.loads(body)


def test_auth_modes_and_the_cli(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'sluice.db'}"
    cp = ControlPlane.start(tmp_path, store=store, args=("--auth", "on"))
    try:  # on: tokens required even before the first exists, even on loopback
        assert http("GET", f"{cp.url}/api/v1/policy")[0] == 401
        assert http("GET", f"{cp.url}/healthz")[0] == 200
    finally:
        cp.proc.stop()
    operator = sluice("token", "create", "--role", "operator", "--store", store).stdout.strip()
    cp = ControlPlane.start(tmp_path, store=store)
    try:
        demo = str(ROOT / "examples/demo.yaml")
        result = sluice("apply", "-f", demo, "--server", cp.url)
        assert result.returncode == 1 and "missing bearer token" in result.stderr
        assert sluice("apply", "-f", demo, "--server", cp.url, "--token", operator).returncode == 0
        result = sluice("history", "--server", cp.url, env={"SLUICE_TOKEN": operator})
        assert result.returncode == 0 and "apply Backend classifier-v1" in result.stdout
        result = sluice("token", "list", "--server", cp.url, env={"SLUICE_TOKEN": operator})
        assert result.returncode == 1 and "has role operator; this needs admin" in result.stderr
        result = sluice("get", "--server", cp.url, "--token", "sluice_wrong")
        assert result.returncode == 1 and "unknown or revoked token" in result.stderr
    finally:
        cp.proc.stop()
    cp = ControlPlane.start(tmp_path, store=store, args=("--auth", "off"))
    try:  # off: open although tokens exist (behind a proxy that authenticates, say)
        assert http("GET", f"{cp.url}/api/v1/policy")[0] == 200
    finally:
        cp.proc.stop()


def test_cli_help_for_new_commands() -> None:
    for command in (["history"], ["diff"], ["rollback"], ["audit"], ["token", "create"], ["token", "list"],
                    ["token", "revoke"]):
        result = sluice(*command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr)


# --- TLS ---------------------------------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and an Envoy client certificate (openssl CLI)."""
    out = tmp_path_factory.mktemp("certs")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sluice test CA",
            cwd=out)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("envoy", "subjectAltName=DNS:edge-mtls\nextendedKeyUsage=clientAuth")):
        (out / f"{name}.ext").write_text(ext + "\n")
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=out)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=out)
    return out


def https_json(url: str, ca: Path) -> Any:
    with urllib.request.urlopen(url, timeout=5, context=ssl.create_default_context(cafile=str(ca))) as r:
        return json.loads(r.read())


def envoy_with_tls(workdir: Path, node_id: str, xds_port: int, certs: Path, client_cert: bool) -> tuple[Proc, int]:
    """An Envoy whose xDS connection uses TLS (`sluice envoy --xds-ca`), presenting the client
    certificate (`--xds-cert`, `--xds-key`) or not."""
    admin = free_port()
    tls = ["--xds-ca", str(certs / "ca.pem"), "--xds-server-name", "localhost"]
    if client_cert:
        tls += ["--xds-cert", str(certs / "envoy.pem"), "--xds-key", str(certs / "envoy.key")]
    proc = Proc(node_id, [PYTHON, "-m", "sluice", "envoy", "--node-id", node_id, "--xds", f"127.0.0.1:{xds_port}",
                          "--listen", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{admin}", *tls,
                          "--concurrency", "1", "--bootstrap", str(workdir / f"{node_id}.yaml"), "--log-level", "info"],
                workdir / f"{node_id}.log").start()
    return proc, admin


def test_https_admin_api_and_mutual_tls_xds(tmp_path: Path, certs: Path) -> None:
    admin_port, xds_port = free_port(), free_port()
    cp = Proc("controlplane", [PYTHON, "-m", "sluice", "controlplane", "--xds-port", str(xds_port),
                               "--admin-port", str(admin_port), "--store", f"sqlite:///{tmp_path / 'sluice.db'}",
                               "--filters-dir", str(ROOT / "build/filters/bin"),
                               "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
                               "--client-ca", str(certs / "ca.pem")], tmp_path / "controlplane.log").start()
    url = f"https://127.0.0.1:{admin_port}"
    envoys: list[Proc] = []
    try:
        wait_until(lambda: https_json(f"{url}/healthz", certs / "ca.pem")["status"] == "ok", 20,
                   what=lambda: f"HTTPS control plane\n{cp.tail()}")
        with pytest.raises(OSError):  # plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=2)
        result = sluice("apply", "-f", str(ROOT / "examples/demo.yaml"), "--server", url,
                        "--cacert", str(certs / "ca.pem"))
        assert result.returncode == 0, result.stderr

        trusted, trusted_admin = envoy_with_tls(tmp_path, "edge-mtls", xds_port, certs, client_cert=True)
        stranger, stranger_admin = envoy_with_tls(tmp_path, "edge-stranger", xds_port, certs, client_cert=False)
        envoys += [trusted, stranger]

        def connected() -> set[str]:
            return {p["node_id"] for p in https_json(f"{url}/api/v1/proxies", certs / "ca.pem")["proxies"]
                    if p["revision"] == 1}

        wait_until(lambda: "edge-mtls" in connected(), 20, what=lambda: f"mTLS Envoy converged\n{trusted.tail()}")
        time.sleep(1.0)  # the stranger has been retrying all along
        assert connected() == {"edge-mtls"}
        stats = http("GET", f"http://127.0.0.1:{stranger_admin}/stats?filter=control_plane.connected_state")[2]
        assert b"control_plane.connected_state: 0" in stats
        stats = http("GET", f"http://127.0.0.1:{trusted_admin}/stats?filter=control_plane.connected_state")[2]
        assert b"control_plane.connected_state: 1" in stats
    finally:
        for envoy in envoys:
            envoy.stop()
        cp.stop()

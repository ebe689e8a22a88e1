"""Real processes for tests: the control plane, Envoy and the backend, on free loopback ports.

Every process is started here and stopped by its pid when its fixture ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
               what: str | Callable[[], str] = "") -> Any:
    """`what` may be a callable, read only on timeout (a process log's tail as it is then)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout}s waiting for {described or check}: last={last!r}")


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_json(url: str, timeout: float = 5.0) -> Any:
    status, _, body = http("GET", url, timeout=timeout)
    if status != 200:
        raise ValueError(f"GET {url} -> {status}: {body[:200]!r}")
    return json.loads(body)


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                      env={**os.environ, **self.env}, start_new_session=True)
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, sig)
            assert self.popen is not None
            self.popen.wait(timeout=15)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


@contextlib.contextmanager
def stopped_on_failure(proc: Proc) -> Iterator[None]:
    """A process that never became ready is stopped here: no fixture will own it."""
    try:
        yield
    except BaseException:
        proc.stop()
        raise


@dataclass
class ControlPlane:
    proc: Proc
    xds_port: int
    admin_port: int
    store: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @classmethod
    def start(cls, workdir: Path, store: str | None = None, xds_port: int | None = None,
              admin_port: int | None = None, env: dict[str, str] | None = None,
              args: tuple[str, ...] = (), name: str = "controlplane") -> ControlPlane:
        """`args`: more flags; `name`: the process and log name (replicas in one workdir)."""
        xds_port = xds_port or free_port()
        admin_port = admin_port or free_port()
        store = store or f"sqlite:///{workdir / 'sluice.db'}"
        proc = Proc(name, [PYTHON, "-m", "sluice", "controlplane", "--xds-port", str(xds_port),
                           "--admin-port", str(admin_port), "--store", store,
                           "--filters-dir", str(ROOT / "build/filters/bin"), *args],
                    workdir / f"{name}.log", env=env or {}).start()
        cp = cls(proc, xds_port, admin_port, store)
        with stopped_on_failure(proc):
            cp.wait_ready()
        return cp

    def wait_ready(self) -> None:
        wait_until(lambda: get_json(f"{self.url}/healthz", timeout=1)["status"] == "ok", 30,
                   what=lambda: f"control plane\n{self.proc.tail()}")

    def restart(self) -> None:
        self.proc.kill()
        self.proc.start()
        self.wait_ready()

    def apply(self, *documents: dict[str, Any], if_match: int | None = None) -> tuple[int, dict[str, Any]]:
        headers = {} if if_match is None else {"If-Match": f'"{if_match}"'}
        status, _, body = http("POST", f"{self.url}/api/v1/apply", {"documents": list(documents)}, headers)
        return status, json.loads(body)

    def proxies(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.url}/api/v1/proxies")["proxies"])

    def revision(self) -> int:
        return int(get_json(f"{self.url}/healthz")["revision"])

    def wait_converged(self, node_id: str, revision: int | None = None, timeout: float = 10.0) -> dict[str, Any]:
        want = revision if revision is not None else self.revision()

        def converged() -> dict[str, Any] | None:
            return next((p for p in self.proxies() if p["node_id"] == node_id and p["revision"] == want), None)

        return wait_until(converged, timeout, what=f"{node_id} to ACK revision {want}")


@dataclass
class Envoy:
    proc: Proc
    node_id: str
    listen_port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @classmethod
    def start(cls, workdir: Path, cp: ControlPlane, node_id: str = "edge-1", concurrency: int = 1,
              cluster: str = "edge", protocol: str | None = None) -> Envoy:
        # SLUICE_TEST_XDS_PROTOCOL=delta runs every test that does not choose under delta.
        protocol = protocol or os.environ.get("SLUICE_TEST_XDS_PROTOCOL", "sotw")
        listen, admin = free_port(), free_port()
        proc = Proc(node_id, [PYTHON, "-m", "sluice", "envoy", "--xds", f"127.0.0.1:{cp.xds_port}",
                              "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
                              "--node-id", node_id, "--cluster", cluster, "--concurrency", str(concurrency),
                              "--xds-protocol", protocol,
                              "--bootstrap", str(workdir / f"{node_id}.yaml"), "--log-level", "info"],
                    workdir / f"{node_id}.log").start()
        envoy = cls(proc, node_id, listen, admin)
        with stopped_on_failure(proc):
            wait_until(lambda: http("GET", f"{envoy.admin}/ready", timeout=1)[0] == 200, 30,
                       what=lambda: f"Envoy {node_id} ready\n{proc.tail()}")
        return envoy

    def config_dump(self, resource: str) -> dict[str, Any]:
        return dict(get_json(f"{self.admin}/config_dump?resource={resource}"))

    def stats(self) -> str:
        return http("GET", f"{self.admin}/stats/prometheus")[2].decode()


@dataclass
class Backend:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, repository: Path, load: str, *extra: str, port: int | None = None) -> Backend:
        port = port or free_port()
        name = f"backend-{load.replace(':', '-').replace(',', '-')}-{port}"
        proc = Proc(name, [PYTHON, "-m", "sluice", "backend", "--http-port", str(port), "--model-repository",
                           str(repository), "--load", load, *extra], workdir / f"{name}.log").start()
        backend = cls(proc, port)
        with stopped_on_failure(proc):
            backend.wait_ready()
        return backend

    def wait_ready(self) -> None:
        wait_until(lambda: http("GET", f"{self.url}/v2/health/ready", timeout=1)[0] == 200, 60,
                   what=lambda: f"backend ready\n{self.proc.tail()}")

    def restart(self) -> None:
        self.proc.stop()
        self.proc.start()
        self.wait_ready()

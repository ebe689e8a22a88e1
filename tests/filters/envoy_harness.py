"""Run a real Envoy with a static bootstrap holding a sluice wasm filter (for tests/filters, and
for the filter benchmarks through bench/envoy_wrk.py).

Envoy is started and stopped by pid, on free ports picked by binding port 0, with
--disable-hot-restart so several Envoys can run side by side.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVOY = REPO_ROOT / ".venv" / "bin" / "envoy"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_filter(wasm: Path, configuration: str | bytes, *, vm_id: str = "sluice_ratelimit",
                name: str = "sluice_ratelimit") -> dict:
    """An envoy.filters.http.wasm entry running `wasm` on V8 with a plugin configuration: text as
    a StringValue, bytes as a BytesValue (as the control plane sends them: Envoy hands BytesValue
    to the VM as is)."""
    if isinstance(configuration, bytes):
        value = {"@type": "type.googleapis.com/google.protobuf.BytesValue",
                 "value": base64.b64encode(configuration).decode()}
    else:
        value = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration}
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                },
                "configuration": value,
            },
        },
    }


def direct_route(name: str, prefix: str) -> dict:
    """A route answering 200 "ok" to every path under `prefix`."""
    return {"name": name, "match": {"prefix": prefix},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}


def bootstrap(listen_port: int, admin_port: int, http_filters: list[dict], *,
              routes: Sequence[tuple[str, str] | dict] = (("r1", "/"),),
              stats_config: dict | None = None) -> dict:
    """Listener with use_remote_address: true (Envoy appends the peer to X-Forwarded-For) and
    routes given as (route name, path prefix), each a `direct_route`, or as route entries."""
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "use_remote_address": True,
                        "route_config": {
                            "name": "local",
                            "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [r if isinstance(r, dict) else direct_route(*r) for r in routes],
                            }],
                        },
                        "http_filters": http_filters + [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            },
                        }],
                    },
                }]}],
            }],
        },
    }
    if stats_config is not None:
        config["stats_config"] = stats_config
    return config


class Envoy:
    """An Envoy process; use as a context manager or call start()/stop().

    `config` is a bootstrap dict (written as <name>.yaml), or a serialized binary Bootstrap
    (<name>.pb: large configurations parse faster) with its `listen_port` and `admin_port`.
    `port` is the listener's port. start() is launch() then wait_ready(), which records
    `ready_s`, the seconds from launch to ready."""

    def __init__(self, workdir: Path, config: dict | bytes, *, name: str = "envoy", concurrency: int = 2,
                 log_level: str = "info", args: Sequence[str] = (), command_prefix: Sequence[str] = (),
                 listen_port: int | None = None, admin_port: int | None = None):
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(config, bytes):
            assert listen_port is not None and admin_port is not None, "a binary bootstrap needs its ports"
            self.config_path = self.workdir / f"{name}.pb"
            self.config_path.write_bytes(config)
        else:
            listen_port = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
            admin_port = config["admin"]["address"]["socket_address"]["port_value"]
            self.config_path = self.workdir / f"{name}.yaml"
            self.config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        self.port: int = listen_port
        self.admin_port: int = admin_port
        self.log_path = self.workdir / f"{name}.log"
        self.concurrency = concurrency
        self.log_level = log_level
        self.args = list(args)
        self.command_prefix = list(command_prefix)  # e.g. taskset
        self.process: subprocess.Popen | None = None
        self.ready_s = 0.0

    def start(self, timeout: float = 30.0) -> Envoy:
        return self.launch().wait_ready(timeout)

    def launch(self) -> Envoy:
        """Starts the process without waiting for it (several then start side by side)."""
        if not ENVOY.exists():
            raise FileNotFoundError(f"{ENVOY} is missing: run `make venv`")
        self._log = open(self.log_path, "wb")
        self._launched = time.monotonic()
        self.process = subprocess.Popen(
            [*self.command_prefix, str(ENVOY), "-c", str(self.config_path), "--disable-hot-restart",
             "--concurrency", str(self.concurrency), "--log-level", self.log_level, *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> Envoy:
        """Waits for the admin /ready; stops the process and raises if it is not."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        self.ready_s = time.monotonic() - self._launched
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log()[-4000:]}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        """For configurations Envoy must refuse: waits for the process to exit."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode()

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def serving(workdir: Path, http_filters: list[dict], *, concurrency: int = 2, **bootstrap_args) -> Iterator[Envoy]:
    """A started Envoy on free ports with `bootstrap(..., http_filters, **bootstrap_args)`, stopped
    on exit (the tests' module-scoped `envoy` fixtures)."""
    config = bootstrap(free_port(), free_port(), http_filters, **bootstrap_args)
    with Envoy(workdir, config, concurrency=concurrency) as proxy:
        yield proxy

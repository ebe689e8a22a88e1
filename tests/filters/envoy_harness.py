"""Run a real Envoy with a static bootstrap holding a sluice wasm filter (for tests/filters).

Envoy is started and stopped by pid, on free ports picked by binding port 0, with
--disable-hot-restart so several Envoys can run side by side.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVOY = REPO_ROOT / ".venv" / "bin" / "envoy"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_filter(wasm: Path, configuration: str, *, vm_id: str = "sluice_ratelimit",
                name: str = "sluice_ratelimit") -> dict:
    """An envoy.filters.http.wasm entry running `wasm` on V8 with a plugin configuration."""
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
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
            },
        },
    }


def bootstrap(listen_port: int, admin_port: int, http_filters: list[dict], *,
              routes: list[tuple[str, str]] = (("r1", "/"),), stats_config: dict | None = None) -> dict:
    """Listener with use_remote_address: true (Envoy appends the peer to X-Forwarded-For) and
    direct_response routes given as (route name, path prefix), each answering 200 "ok"."""
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
                                "routes": [{
                                    "name": name,
                                    "match": {"prefix": prefix},
                                    "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                                } for name, prefix in routes],
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
    """An Envoy process; use as a context manager or call start()/stop()."""

    def __init__(self, workdir: Path, config: dict, *, concurrency: int = 2, log_level: str = "info"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "envoy.yaml"
        self.config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        self.log_path = self.workdir / "envoy.log"
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        self.concurrency = concurrency
        self.log_level = log_level
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "Envoy":
        if not ENVOY.exists():
            raise FileNotFoundError(f"{ENVOY} is missing: run `make venv`")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(ENVOY), "-c", str(self.config_path), "--disable-hot-restart",
             "--concurrency", str(self.concurrency), "--log-level", self.log_level],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.log()[-4000:]}")

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

    def __enter__(self) -> "Envoy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""What the canary tests share: a canary's status, waiting on its state, an edge on a policy,
and a webhook receiver whose pre-promotion gate the test opens."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness import ControlPlane, Envoy, get_json, wait_until


def canary_status(cp: ControlPlane, name: str) -> dict[str, Any]:
    return get_json(f"{cp.url}/api/v1/canaries/{name}/status")


def wait_canary(cp: ControlPlane, name: str, states: set[str], timeout: float) -> dict[str, Any]:
    """The canary's status once its state is one of `states`."""
    return wait_until(lambda: (s := canary_status(cp, name))["status"]["state"] in states and s, timeout,
                      interval=0.1, what=f"canary {name} to reach {states}")["status"]


def edge_on(cp: ControlPlane, start_envoy: Callable[..., Envoy], docs: list[dict[str, Any]]) -> Envoy:
    """An edge Envoy serving `docs`, converged."""
    code, body = cp.apply(*docs)
    assert code == 200, body
    envoy = start_envoy(cp)
    cp.wait_converged(envoy.node_id)
    return envoy


@dataclass
class Hooks:
    base: str
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    gate_open: threading.Event = field(default_factory=threading.Event)  # opens /pre-promotion


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Hooks]:
    hooks = Hooks("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            hooks.calls.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            closed = self.path == "/pre-promotion" and not hooks.gate_open.is_set()
            self.send_response(403 if closed else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hooks.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hooks
    finally:
        server.shutdown()

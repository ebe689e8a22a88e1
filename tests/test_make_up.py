"""`sluice up` (what `make up` runs): the whole mesh answers, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from pathlib import Path

from harness import PYTHON, Proc, free_port, http, wait_until


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie awaiting its parent's wait() is gone for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_up_serves_and_stops_cleanly(tmp_path: Path, model_repository: Path) -> None:
    ports = {name: free_port() for name in ("xds", "admin", "listen", "envoy_admin", "v1", "v2", "llm")}
    up = Proc("up", [PYTHON, "-m", "sluice", "up", "--model-repository", str(model_repository),
                     "--store", f"sqlite:///{tmp_path / 'up.db'}", "--xds-port", str(ports["xds"]),
                     "--admin-port", str(ports["admin"]), "--listen-port", str(ports["listen"]),
                     "--envoy-admin-port", str(ports["envoy_admin"]),
                     "--backend-ports", f"{ports['v1']},{ports['v2']}", "--llm-port", str(ports["llm"]),
                     "--logs", str(tmp_path / "logs")],
              tmp_path / "up.log").start()
    children: list[int] = []
    try:
        wait_until(lambda: "sluice is up." in up.log.read_text(), 90, interval=0.2, what=lambda: f"mesh up\n{up.tail()}")
        children = [int(p) for p in re.findall(r"pid (\d+)", up.log.read_text())]
        assert len(children) == 5  # control plane, two classifier backends, the generative backend, Envoy
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        status, headers, raw = http("POST", f"http://127.0.0.1:{ports['listen']}/v2/models/classifier/infer", body)
        assert status == 200 and headers["x-model-version"] == "1", raw
        assert json.loads(raw)["outputs"][0]["shape"] == [1, 3]
        chat = {"model": "tiny-llama", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]}
        status, headers, raw = http("POST", f"http://127.0.0.1:{ports['listen']}/v1/chat/completions", chat)
        assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] <= 4, raw

        os.kill(up.pid, signal.SIGINT)
        assert up.popen is not None
        assert up.popen.wait(timeout=30) == 0
        assert "sluice: stopped" in up.log.read_text()
        assert [p for p in children if _pid_alive(p)] == []
        assert [name for name, port in ports.items() if _listening(port)] == []
    finally:
        up.kill()
        for pid in children:
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

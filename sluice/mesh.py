"""`sluice up`: the whole local mesh on embedded defaults, stopped as one by Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from sluice.client import ApiError, Client

ROOT = Path(__file__).resolve().parent.parent


class Stopped(Exception):
    """Ctrl-C or SIGTERM arrived."""


class Mesh:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stop_requested = False

    def on_signal(self, signum: int, _: object) -> None:
        # Only a flag: raising from a handler could interrupt the shutdown itself.
        self.stop_requested = True

    def spawn(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        child = subprocess.Popen([sys.executable, "-m", "sluice", *args], stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # our Ctrl-C reaches children only through us
        log.close()
        self.children.append((name, child))
        print(f"  started {name:<13} pid {child.pid:<7} log {self.logs / (name + '.log')}", flush=True)

    def exited(self) -> str | None:
        if self.stop_requested:
            raise Stopped
        return next((name for name, child in self.children if child.poll() is not None), None)

    def stop(self) -> None:
        for _, child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name, child in reversed(self.children):
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop in time; killing pid {child.pid}", flush=True)
                child.kill()
                child.wait()


def _wait(what: str, check: Callable[[], bool], mesh: Mesh, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (name := mesh.exited()) is not None:
            raise RuntimeError(f"{name} exited while waiting for {what}; see {mesh.logs / (name + '.log')}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return bool(r.status == 200)


def reuse_notice(store: str, revision: int, policy: str) -> str:
    """What `sluice up` says when the store already holds a policy from an earlier run."""
    if store.startswith("sqlite:///"):
        path = store.removeprefix("sqlite:///")
        fresh = f"stop sluice (Ctrl-C), then `rm -f {path} {path}-wal {path}-shm` and start it again"
    else:
        fresh = "stop sluice (Ctrl-C) and start it again with an empty store (--store URL)"
    return (f"  reusing the policy stored in {store} (revision {revision}, from an earlier run); {policy} was not "
            f"applied.\n  To start fresh: {fresh}.")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice up", description="Run the whole local mesh until Ctrl-C.")
    p.add_argument("--model-repository", default="models", help="demo models (default %(default)s)")
    p.add_argument("--store", default="sqlite:///var/sluice.db", help="policy store URL (default %(default)s)")
    p.add_argument("--xds-port", type=int, default=18000)
    p.add_argument("--admin-port", type=int, default=8080)
    p.add_argument("--listen-port", type=int, default=10000, help="edge listener (default %(default)s)")
    p.add_argument("--envoy-admin-port", type=int, default=9901)
    p.add_argument("--backend-ports", default="8001,8002", help="classifier version 1 and 2 (default %(default)s)")
    p.add_argument("--llm-port", type=int, default=8003, help="the generative backend, tiny-llama (default %(default)s)")
    p.add_argument("--policy", default=str(ROOT / "examples/demo.yaml"),
                   help="policy applied when the store is empty (default examples/demo.yaml)")
    p.add_argument("--logs", default="var/logs", help="where each process logs (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    v1_port, v2_port = (int(p) for p in args.backend_ports.split(","))
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    mesh = Mesh(logs)
    signal.signal(signal.SIGTERM, mesh.on_signal)
    signal.signal(signal.SIGINT, mesh.on_signal)
    admin = f"http://127.0.0.1:{args.admin_port}"
    print("sluice: starting the local mesh", flush=True)
    try:
        mesh.spawn("controlplane", "controlplane", "--xds-port", str(args.xds_port),
                   "--admin-port", str(args.admin_port), "--store", args.store)
        _wait("the control plane", lambda: _ok(f"{admin}/healthz"), mesh)
        client = Client(admin)
        stored = client.call("GET", "/healthz")["revision"]
        if stored == 0:
            docs = [d for d in yaml.safe_load_all(Path(args.policy).read_text()) if d]
            for d in docs:  # the demo policy names the default ports; follow the ones chosen here
                ports = {"classifier-v1": v1_port, "classifier-v2": v2_port, "tiny-llama": args.llm_port}
                if d["kind"] == "Backend" and d["name"] in ports:
                    d["spec"]["endpoints"][0]["port"] = ports[d["name"]]
            revision = client.call("POST", "/api/v1/apply", {"documents": docs})["revision"]
            print(f"  applied {args.policy} as revision {revision}", flush=True)
        else:
            print(reuse_notice(args.store, stored, args.policy), flush=True)
        for version, port in ((1, v1_port), (2, v2_port)):
            mesh.spawn(f"backend-v{version}", "backend", "--http-port", str(port),
                       "--model-repository", args.model_repository, "--load", f"classifier:{version}")
        mesh.spawn("backend-llm", "backend", "--http-port", str(args.llm_port),
                   "--model-repository", args.model_repository, "--load", "tiny-llama")
        mesh.spawn("envoy", "envoy", "--xds", f"127.0.0.1:{args.xds_port}",
                   "--listen", f"127.0.0.1:{args.listen_port}", "--admin", f"127.0.0.1:{args.envoy_admin_port}",
                   "--node-id", "edge-local", "--bootstrap", "var/envoy-edge-local.yaml")
        for version, port in ((1, v1_port), (2, v2_port)):
            _wait(f"backend version {version}", lambda p=port: _ok(f"http://127.0.0.1:{p}/v2/health/ready"), mesh)
        _wait("the generative backend", lambda: _ok(f"http://127.0.0.1:{args.llm_port}/v2/health/ready"), mesh)
        _wait("Envoy", lambda: _ok(f"http://127.0.0.1:{args.envoy_admin_port}/ready"), mesh)
        _wait("the edge route", lambda: _ok(f"http://127.0.0.1:{args.listen_port}/v2/models/classifier/ready"), mesh)
        chat = {"model": "tiny-llama", "stream": True, "max_tokens": 20, "messages": [{"role": "user", "content": "Tell me about the river."}]}
        print(f"""
sluice is up.
  inference   http://127.0.0.1:{args.listen_port}/v2/models/classifier/infer   (edge Envoy)
  admin API   {admin}/api/v1/   (sluice get | apply -f FILE | status)
  console     {admin}/ui/   (the mesh, canaries, limits, history, backends)
  xDS         127.0.0.1:{args.xds_port}
  Envoy admin http://127.0.0.1:{args.envoy_admin_port}/
  OpenAI API  http://127.0.0.1:{args.listen_port}/v1/   (model tiny-llama, through the edge)
  backends    version 1 on :{v1_port}, version 2 on :{v2_port}, tiny-llama on :{args.llm_port}
Try:
  curl -s -X POST http://127.0.0.1:{args.listen_port}/v2/models/classifier/infer \\
    -d '{json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})}'
  curl -sN http://127.0.0.1:{args.listen_port}/v1/chat/completions \
    -d '{json.dumps(chat)}'
Ctrl-C stops everything.""", flush=True)
        while (name := mesh.exited()) is None:
            time.sleep(0.5)
        print(f"sluice: {name} exited; see {logs / (name + '.log')}; stopping the mesh", flush=True)
        return 1
    except Stopped:
        return 0
    except (RuntimeError, ApiError, OSError) as exc:
        print(f"sluice: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("sluice: stopping", flush=True)
        mesh.stop()
        print("sluice: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""The control plane fails, proxies do not: real Envoys under steady traffic while the control
plane is SIGKILLed, changes policy while a proxy is away, removes a backend the routes used,
or serves proxies that hang or vanish mid-push."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import Backend, ControlPlane, Envoy, http
from policies import demo_policy
from xds_client import AdsClient

from controlplane.resources import CLUSTER, LISTENER

X = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 2.0, 0.25]}]}
UPDATES = ("cluster_manager.cds", "listener_manager.lds", "http.edge.rds.edge",
           "cluster.classifier-v1", "cluster.classifier-v2")


class Traffic:
    """Inference requests through each Envoy, one after another, until stopped; every answer
    counted by status and model version (`error` for no answer at all)."""

    def __init__(self, envoys: list[Envoy], per_envoy: int) -> None:
        self.seen: Counter[tuple[int, str]] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._drive, args=(e,)) for e in envoys for _ in range(per_envoy)]

    def _drive(self, envoy: Envoy) -> None:
        while not self._stop.is_set():
            try:
                status, headers, _ = http("POST", f"{envoy.url}/v2/models/classifier/infer", X, timeout=5)
                key = (status, headers.get("x-model-version", headers.get("x-envoy-response-flags", "?")))
            except OSError as exc:
                key = (0, f"error: {exc}")
            with self._lock:
                self.seen[key] += 1
            time.sleep(0.01)

    @property
    def failed(self) -> dict[tuple[int, str], int]:
        with self._lock:
            return {k: n for k, n in self.seen.items() if k[0] != 200}

    def served_by(self, version: str) -> int:
        with self._lock:
            return self.seen[(200, version)]


@contextmanager
def traffic(envoys: list[Envoy], per_envoy: int = 1) -> Iterator[Traffic]:
    t = Traffic(envoys, per_envoy)
    for thread in t._threads:
        thread.start()
    try:
        yield t
    finally:
        t._stop.set()
        for thread in t._threads:
            thread.join()


def updates(envoy: Envoy) -> dict[str, int]:
    """Each xDS subscription's update_success counter: how many config updates Envoy applied."""
    stats = json.loads(http("GET", f"{envoy.admin}/stats?format=json&filter=update_success$")[2])["stats"]
    return {s["name"].removesuffix(".update_success"): s["value"] for s in stats
            if s["name"].removesuffix(".update_success") in UPDATES}


def mesh(cp: ControlPlane, start_envoy: Callable[..., Envoy], policy: list[dict]) -> list[Envoy]:
    """One Envoy per xDS variant, converged on `policy`."""
    status, body = cp.apply(*policy)
    assert status == 200, body
    envoys = [start_envoy(cp, node_id=f"edge-{p}", protocol=p) for p in ("sotw", "delta")]
    for envoy in envoys:
        cp.wait_converged(envoy.node_id)
    return envoys


def test_sigkill_under_traffic(controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
                               backends: dict[int, Backend]) -> None:
    envoys = mesh(controlplane, start_envoy, demo_policy(backends[1].port, backends[2].port))
    before = {e.node_id: updates(e) for e in envoys}
    assert all(len(u) == len(UPDATES) for u in before.values()), before
    with traffic(envoys) as t:
        time.sleep(0.5)
        controlplane.proc.kill()
        time.sleep(1.0)  # the proxies' streams fail and retry meanwhile
        controlplane.proc.start()
        controlplane.wait_ready()
        ready = time.monotonic()
        for envoy in envoys:
            controlplane.wait_converged(envoy.node_id, timeout=30)
        resynced = time.monotonic() - ready
        time.sleep(0.5)
    print(f"resynced {resynced * 1e3:.0f} ms after the restarted control plane was ready; traffic {dict(t.seen)}")
    assert t.failed == {} and t.served_by("1") > 50
    # Content versions are the same in the new process: nothing was re-sent, so Envoy applied nothing.
    assert {e.node_id: updates(e) for e in envoys} == before


def test_stale_proxy_gets_the_current_revision(tmp_path: Path, controlplane: ControlPlane,
                                               start_envoy: Callable[..., Envoy], backends: dict[int, Backend]) -> None:
    envoys = mesh(controlplane, start_envoy, demo_policy(backends[1].port, backends[2].port))
    controlplane.proc.kill()
    # The policy changes while the proxies cannot reach any control plane: another replica
    # on the same store, on ports they do not know, takes the write.
    other = ControlPlane.start(tmp_path / "other", store=controlplane.store)
    try:
        status, body = other.apply(*demo_policy(backends[1].port, backends[2].port, 0, 100))
        assert status == 200, body
    finally:
        other.proc.stop()
    controlplane.proc.start()
    controlplane.wait_ready()
    for envoy in envoys:
        controlplane.wait_converged(envoy.node_id, body["revision"], timeout=5)
        assert {http("POST", f"{envoy.url}/v2/models/classifier/infer", X)[1]["x-model-version"]
                for _ in range(5)} == {"2"}


def test_removed_backend_never_meets_a_request(controlplane: ControlPlane, start_envoy: Callable[..., Envoy],
                                               backends: dict[int, Backend]) -> None:
    def backend(name: str, port: int) -> dict:
        return {"kind": "Backend", "name": name, "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}}

    def service(to: str) -> dict:
        return {"kind": "Service", "name": "classifier", "spec": {"routes": [
            {"name": "infer", "match": {"prefix": "/v2/models/classifier"}, "split": [{"backend": to, "weight": 1}]}]}}

    ports = {"model-a": backends[1].port, "model-c": backends[2].port}
    envoys = mesh(controlplane, start_envoy, [backend("model-a", ports["model-a"]), service("model-a")])
    # Several callers per Envoy, so requests are in flight whenever a cluster could be missing.
    with traffic(envoys, per_envoy=4) as t:
        for old, new in (("model-a", "model-c"), ("model-c", "model-a")) * 2:
            time.sleep(0.3)
            # Move the route to a new backend and delete the old one, inside one debounce window.
            status, body = controlplane.apply(backend(new, ports[new]), service(new))
            assert status == 200, body
            status, _, raw = http("DELETE", f"{controlplane.url}/api/v1/backends/{old}")
            assert status == 200, raw
            for envoy in envoys:
                controlplane.wait_converged(envoy.node_id, timeout=5)
        time.sleep(0.3)
    print(f"traffic {dict(t.seen)}")
    assert t.failed == {}  # in particular no 503 with response flag NC (no cluster)
    assert t.served_by("1") > 10 and t.served_by("2") > 10
    for envoy in envoys:
        clusters = json.loads(http("GET", f"{envoy.admin}/clusters?format=json")[2])["cluster_statuses"]
        assert sorted(c["name"] for c in clusters) == ["model-a", "sluice_xds"]


async def test_hung_and_vanishing_proxies_do_not_block_others(controlplane: ControlPlane,
                                                             start_envoy: Callable[..., Envoy],
                                                             backends: dict[int, Backend]) -> None:
    (envoy,) = await asyncio.to_thread(
        lambda: [e for e in mesh(controlplane, start_envoy, demo_policy(backends[1].port, backends[2].port))
                 if e.node_id == "edge-sotw"])
    target = f"127.0.0.1:{controlplane.xds_port}"
    hung = AdsClient(target, "hung", reading=False)  # never reads its stream
    silent = AdsClient(target, "silent")  # reads, never answers
    leaving = AdsClient(target, "leaving", protocol="delta")  # goes away while a push is in flight
    try:
        for client in (hung, silent, leaving):
            await client.send(CLUSTER)
            await client.send(LISTENER)
        await silent.recv()
        await leaving.recv()
        for w1, w2 in ((0, 100), (100, 0), (50, 50)):
            status, body = await asyncio.to_thread(controlplane.apply, *demo_policy(backends[1].port,
                                                                                   backends[2].port, w1, w2))
            assert status == 200, body
            if not leaving.call.done():
                await leaving.close()
            # A silent or leaving stream must not hold the push back: the Envoy converges anyway.
            await asyncio.to_thread(controlplane.wait_converged, envoy.node_id, body["revision"], 30)
        proxies = {p["node_id"]: p for p in await asyncio.to_thread(controlplane.proxies)}
        assert "leaving" not in proxies
        assert proxies["silent"]["types"]["cds"]["in_flight_version"] is not None  # still waiting, alone
        assert proxies["hung"]["revision"] is None
    finally:
        for client in (hung, silent, leaving):
            await client.close()

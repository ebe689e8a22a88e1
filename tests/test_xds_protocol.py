"""Both xDS variants on raw gRPC streams against a real control plane: resync without re-sends
after a restart, wildcard and named subscriptions, removals, removed clusters kept while
ACKed routes use them, NACKs never re-sent, and bursts of writes debounced."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable

import aiohttp
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse
from harness import ControlPlane, http, wait_until
from policies import demo_policy
from xds_client import AdsClient, Response
from xds_h2_client import H2AdsClient

from controlplane.cache.references import clusters_used
from controlplane.resources import CLUSTER, ENDPOINT, ROUTE

BACKENDS = ["classifier-v1", "classifier-v2"]


def names(response: Response) -> list[str]:
    if isinstance(response, DeltaDiscoveryResponse):
        return sorted(r.name for r in response.resources)
    kind = {CLUSTER: Cluster, ENDPOINT: ClusterLoadAssignment, ROUTE: RouteConfiguration}[response.type_url]
    return sorted(getattr(kind.FromString(r.value), "cluster_name" if kind is ClusterLoadAssignment else "name")
                  for r in response.resources)


def routes_to(response: Response) -> frozenset[str]:
    """The clusters an RDS response's (only) route configuration sends traffic to."""
    (resource,) = response.resources
    raw = resource.value if isinstance(response, DiscoveryResponse) else resource.resource.value
    return clusters_used(RouteConfiguration.FromString(raw))


def metric(cp: ControlPlane, name: str, **labels: str) -> float:
    text = http("GET", f"{cp.url}/metrics")[2].decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + want + '}') if want else ''} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def applied(cp: ControlPlane, *documents: dict) -> int:
    """Apply, and return the revision once it is published (in the snapshots proxies get)."""
    status, body = cp.apply(*documents)
    assert status == 200, body
    revision = int(body["revision"])
    wait_until(lambda: metric(cp, "sluice_published_revision") >= revision, 5, what=f"revision {revision} published")
    return revision


def delete(cp: ControlPlane, plural: str, name: str) -> None:
    status, _, body = http("DELETE", f"{cp.url}/api/v1/{plural}/{name}")
    assert status == 200, body


def backend(name: str, port: int, **spec: object) -> dict:
    return {"kind": "Backend", "name": name, "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}], **spec}}


def service(to: str) -> dict:
    return {"kind": "Service", "name": "classifier", "spec": {"hosts": ["*"], "routes": [
        {"name": "infer", "match": {"prefix": "/"}, "split": [{"backend": to, "weight": 100}]}]}}


def target(cp: ControlPlane) -> str:
    return f"127.0.0.1:{cp.xds_port}"


async def test_delta_restart_resends_nothing_unchanged(controlplane: ControlPlane) -> None:
    applied(controlplane, *demo_policy(8001, 8002))
    first = AdsClient(target(controlplane), "raw-1", protocol="delta")
    await first.send(CLUSTER, resource_names_subscribe=["*"])
    response = await first.recv()
    versions = {r.name: r.version for r in response.resources}
    assert sorted(versions) == BACKENDS and not response.removed_resources
    await first.ack(response)
    await first.close()

    controlplane.restart()  # SIGKILL: nothing of the old process's state survives
    again = AdsClient(target(controlplane), "raw-1", protocol="delta")
    try:
        await again.send(CLUSTER, resource_names_subscribe=["*"], initial_resource_versions=versions)
        await again.quiet(1.0)  # the same content has the same versions in the new process
        applied(controlplane, backend("classifier-v2", 8002, connect_timeout_s=2.0))
        changed = await again.recv()
        assert names(changed) == ["classifier-v2"] and not changed.removed_resources  # only what changed
        assert changed.resources[0].version != versions["classifier-v2"]
        await again.ack(changed)
    finally:
        await again.close()


async def test_delta_named_subscriptions_and_removals(controlplane: ControlPlane) -> None:
    applied(controlplane, *demo_policy(8001, 8002))
    client = AdsClient(target(controlplane), "raw-named", protocol="delta")
    try:
        await client.send(CLUSTER)  # no names in the first request: the legacy wildcard
        cds = await client.recv()
        assert names(cds) == BACKENDS
        await client.ack(cds)
        await client.send(ENDPOINT, resource_names_subscribe=["classifier-v1"])
        eds = await client.recv()
        assert names(eds) == ["classifier-v1"]
        await client.ack(eds)
        await client.send(ENDPOINT, resource_names_subscribe=["classifier-v2"])
        eds = await client.recv()
        assert names(eds) == ["classifier-v2"]  # what was already sent is not sent again
        await client.ack(eds)
        await client.send(ENDPOINT, resource_names_unsubscribe=["classifier-v1"])
        applied(controlplane, backend("classifier-v1", 9001))  # changes v1's endpoints only ...
        await client.quiet(0.5)  # ... which this proxy no longer asks for

        applied(controlplane, service("classifier-v1"))
        delete(controlplane, "backends", "classifier-v2")
        removed = await client.recv()
        assert removed.type_url == CLUSTER and removed.removed_resources == ["classifier-v2"]
        await client.ack(removed)
        removed = await client.recv()
        assert removed.type_url == ENDPOINT and removed.removed_resources == ["classifier-v2"]
        await client.ack(removed)
    finally:
        await client.close()


async def test_sotw_restart_resends_nothing_unchanged(controlplane: ControlPlane) -> None:
    revision = applied(controlplane, *demo_policy(8001, 8002))
    first = AdsClient(target(controlplane), "raw-sotw")
    await first.send(CLUSTER)
    cds = await first.recv()
    await first.send(ENDPOINT, resource_names=BACKENDS)
    await first.ack(cds)
    eds = await first.recv()
    assert names(eds) == BACKENDS
    await first.ack(eds, resource_names=BACKENDS)
    await first.close()

    controlplane.restart()
    again = AdsClient(target(controlplane), "raw-sotw")
    try:
        await again.send(CLUSTER, version_info=cds.version_info)
        await again.send(ENDPOINT, version_info=eds.version_info, resource_names=BACKENDS)
        await again.quiet(1.0)
        (proxy,) = controlplane.proxies()
        assert {t: (s["acked_version"], s["acked_revision"]) for t, s in proxy["types"].items()
                if t in ("cds", "eds")} == {"cds": (cds.version_info, revision), "eds": (eds.version_info, revision)}
    finally:
        await again.close()


async def subscribed(client: AdsClient, clusters: list[str]) -> dict[str, Response]:
    """Clusters, their endpoints and the edge routes, each received and ACKed (RDS without LDS:
    the raw client names the route configuration itself)."""
    sotw = client.protocol == "sotw"
    got: dict[str, Response] = {}
    await client.send(CLUSTER, **({} if sotw else {"resource_names_subscribe": ["*"]}))
    got[CLUSTER] = await client.recv()
    await client.send(ENDPOINT, **({"resource_names": clusters} if sotw else {"resource_names_subscribe": clusters}))
    await client.ack(got[CLUSTER])
    got[ENDPOINT] = await client.recv()
    await client.ack(got[ENDPOINT], **({"resource_names": clusters} if sotw else {}))
    await client.send(ROUTE, **({"resource_names": ["edge"]} if sotw else {"resource_names_subscribe": ["edge"]}))
    got[ROUTE] = await client.recv()
    await client.ack(got[ROUTE], **({"resource_names": ["edge"]} if sotw else {}))
    return got


@pytest.mark.parametrize("protocol", ["sotw", "delta"])
async def test_removed_cluster_stays_until_acked_routes_stop_using_it(controlplane: ControlPlane,
                                                                      protocol: str) -> None:
    applied(controlplane, backend("a", 8001), backend("b", 8002), service("a"))
    client = AdsClient(target(controlplane), f"raw-mbb-{protocol}", protocol=protocol)
    sotw = protocol == "sotw"
    try:
        first = await subscribed(client, ["a", "b"])
        assert routes_to(first[ROUTE]) == {"a"}
        # Move the route to a new backend c and delete a, as fast as an operator's script would.
        applied(controlplane, backend("c", 8003), service("c"))
        delete(controlplane, "backends", "a")

        cds = await client.recv()
        assert cds.type_url == CLUSTER
        assert names(cds) == (["a", "b", "c"] if sotw else ["c"]) and not getattr(cds, "removed_resources", [])
        # As Envoy does: ask for the new cluster's endpoints (SotW: on the last EDS nonce), then ACK.
        await client.send(ENDPOINT, **({"resource_names": ["a", "b", "c"], "response_nonce": first[ENDPOINT].nonce,
                                        "version_info": first[ENDPOINT].version_info} if sotw else
                                       {"resource_names_subscribe": ["c"]}))
        await client.ack(cds)
        eds = await client.recv()
        assert eds.type_url == ENDPOINT and "c" in names(eds)
        await client.ack(eds, **({"resource_names": ["a", "b", "c"]} if sotw else {}))
        rds = await client.recv()
        assert rds.type_url == ROUTE and routes_to(rds) == {"c"}
        await client.quiet(0.5)  # a stays while the routes the proxy may run still use it

        await client.ack(rds, **({"resource_names": ["edge"]} if sotw else {}))
        cds = await client.recv()  # the proxy ACKed routes without a: now a goes
        assert cds.type_url == CLUSTER
        if sotw:
            assert names(cds) == ["b", "c"]
        else:
            assert cds.removed_resources == ["a"] and not cds.resources
    finally:
        await client.close()


@pytest.mark.parametrize("protocol", ["sotw", "delta"])
async def test_nack_is_not_resent(controlplane: ControlPlane, protocol: str) -> None:
    applied(controlplane, *demo_policy(8001, 8002))
    client = AdsClient(target(controlplane), f"raw-nack-{protocol}", protocol=protocol)
    sotw = protocol == "sotw"
    try:
        await subscribed(client, BACKENDS)
        applied(controlplane, *demo_policy(8001, 8002, 0, 100))
        rds = await client.recv()
        pushes = metric(controlplane, "sluice_xds_pushes_total", type="rds")
        await client.ack(rds, error="refused by the test", **({"resource_names": ["edge"]} if sotw else {}))
        await client.quiet(1.0)
        assert metric(controlplane, "sluice_xds_pushes_total", type="rds") == pushes
        assert metric(controlplane, "sluice_xds_nacks_total", type="rds") == 1
        (proxy,) = controlplane.proxies()
        assert proxy["types"]["rds"]["last_nack"]["message"] == "refused by the test"
        applied(controlplane, *demo_policy(8001, 8002, 50, 50))  # the next change is pushed as usual
        assert (await client.recv()).type_url == ROUTE
    finally:
        await client.close()


async def test_burst_of_writes_is_pushed_once_or_twice(controlplane: ControlPlane) -> None:
    applied(controlplane, *demo_policy(8001, 8002))
    follower = AdsClient(target(controlplane), "raw-follower")
    following = asyncio.create_task(follower.follow())
    try:
        await asyncio.to_thread(controlplane.wait_converged, "raw-follower")
        before = await asyncio.to_thread(metric, controlplane, "sluice_xds_pushes_total", type="rds")
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            for i in range(100):
                svc = demo_policy(8001, 8002, 100 - i, i + 1)[2]
                async with session.put(f"{controlplane.url}/api/v1/services/classifier", json=svc) as r:
                    assert r.status == 200, await r.text()
            took = time.monotonic() - started
        last = await asyncio.to_thread(controlplane.revision)
        await asyncio.to_thread(controlplane.wait_converged, "raw-follower", last)
        pushes = await asyncio.to_thread(metric, controlplane, "sluice_xds_pushes_total", type="rds") - before
        print(f"100 writes in {took * 1e3:.0f} ms -> {pushes:.0f} RDS push(es)")
        # At most one push per max delay (0.25 s) of writing, plus one: 100 writes within
        # 200 ms make one or two; a loaded machine that takes longer to write gets its share.
        assert 1 <= pushes <= math.ceil(took / 0.25) + 1, f"100 writes in {took:.3f} s caused {pushes} pushes"
        (proxy,) = await asyncio.to_thread(controlplane.proxies)
        assert {t for t, s in proxy["types"].items() if s["acked_revision"] == last} == {"cds", "eds", "lds", "rds"}
    finally:
        following.cancel()
        await follower.close()


@pytest.mark.parametrize("protocol", ["sotw", "delta"])
async def test_the_bench_fleets_http2_client_follows_as_the_grpc_one_does(controlplane: ControlPlane, protocol: str) -> None:
    # bench/xds_scale.py's simulated proxies use this client: it must converge, and take every
    # update, exactly as a grpc.aio stream does.
    applied(controlplane, *demo_policy(8001, 8002))
    acked: dict[str, dict[str, str]] = {"grpc": {}, "h2": {}}
    clients = {"grpc": AdsClient(target(controlplane), "grpc", protocol=protocol),
               "h2": H2AdsClient(target(controlplane), "h2", protocol=protocol)}

    def record(name: str) -> Callable[[str, Response], None]:
        def on_ack(type_url: str, response: Response) -> None:
            acked[name][type_url] = response.version_info if isinstance(response, DiscoveryResponse) else ",".join(
                sorted(f"{r.name}@{r.version}" for r in response.resources))
        return on_ack

    following = [asyncio.create_task(c.follow(record(name))) for name, c in clients.items()]
    try:
        for revision in (None, applied(controlplane, backend("classifier-v2", 8003), service("classifier-v2"))):
            for name in clients:
                await asyncio.to_thread(controlplane.wait_converged, name, revision)
            assert acked["h2"] == acked["grpc"] and ROUTE in acked["h2"]
        assert not any(task.done() for task in following)
    finally:
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)
        for c in clients.values():
            await c.close()

"""State that follows proxies and policy must shrink with them: a control plane that runs for
months under churning proxies (autoscaling, sidecars on ephemeral ports) keeps only what the
proxies connected now need. Private fields are read where no public figure says their size."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from policies import demo_policy
from publishing import publishing
from xds_client import AdsClient

from controlplane.policy import Policy, parse_document, with_document
from controlplane.quota.balancer import Balancer
from controlplane.resources import CLUSTER
from controlplane.store import Revision
from controlplane.translate import translate
from controlplane.xds import ProxyRegistry, ProxyStatus

BOUND_S = 30.0  # generous: a loaded 2-core machine


async def eventually(check: Any, what: str) -> None:
    try:
        async with asyncio.timeout(BOUND_S):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {BOUND_S} s: {what}") from None


def _policy(*extra: dict[str, Any]) -> Policy:
    policy = Policy()
    for raw in [*demo_policy(1, 2), *extra]:
        policy = with_document(policy, parse_document(raw))
    return policy


async def test_a_group_is_dropped_when_its_last_proxy_leaves() -> None:
    """20 edge proxies, each on its own listen port (its own group), over real ADS streams: while
    one of a group stays, the group stays; once each has left, neither the cache nor the
    publisher holds any group (before: every group ever seen was translated at every revision)."""
    clients: list[AdsClient] = []
    async with publishing(translate) as serving:
        cache, publisher, port = serving.cache, serving.publisher, serving.port
        try:
            serving.store.queue.put_nowait(Revision(1, _policy(), 0.0, "test", ""))
            await eventually(lambda: publisher.revision is not None, "revision 1 processed")
            for i in range(20):
                client = AdsClient(f"127.0.0.1:{port}", f"edge-{i}", metadata={"listen_port": 20000 + i})
                clients.append(client)
                await client.send(CLUSTER)
                assert (await client.recv(timeout=BOUND_S)).type_url == CLUSTER
            twin = AdsClient(f"127.0.0.1:{port}", "edge-twin", metadata={"listen_port": 20000})
            await twin.send(CLUSTER)
            await twin.recv(timeout=BOUND_S)
            assert len(cache._snapshots) == len(publisher._groups) == 20

            await clients[0].close()  # its group still has the twin
            await asyncio.sleep(0.2)
            assert "edge@127.0.0.1:20000" in cache._snapshots
            for client in [*clients[1:], twin]:
                await client.close()
            await eventually(lambda: not cache._snapshots and not publisher._groups, "every group dropped")

            # A proxy of a dropped group that comes back is served at once.
            again = AdsClient(f"127.0.0.1:{port}", "edge-again", metadata={"listen_port": 20005})
            clients.append(again)
            await again.send(CLUSTER)
            assert (await again.recv(timeout=BOUND_S)).type_url == CLUSTER
        finally:
            for client in clients:
                await client.close()


async def test_demand_of_proxies_that_left_is_forgotten() -> None:
    """The quota balancer reads 30 edge Envoys' counters (a real HTTP stats endpoint); after 29
    disconnect, it keeps readings for the one left only (before: every node ever measured)."""
    hits = 0

    async def stats(_: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.json_response({"stats": [{"name": "wasmcustom.sluice_ratelimit.shared.requests", "value": hits}]})

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    limit = {"kind": "RateLimit", "name": "shared", "spec": {
        "service": "classifier", "rate": 100, "burst": 40, "key": [], "scope": "global"}}
    policy = _policy(limit)
    proxies = ProxyRegistry()
    balancer = Balancer(proxies, lambda: policy, lambda _: None, interval_s=0.05)
    edges = [ProxyStatus(f"edge-{i}", "edge", "g", i, admin_address=address) for i in range(30)]
    for proxy in edges:
        proxies.connect(proxy)
    running = asyncio.create_task(balancer.run())
    try:
        await eventually(lambda: {n for n, _ in balancer._demand} == {p.node_id for p in edges}, "every edge measured")
        for proxy in edges[1:]:
            proxies.disconnect(proxy)
        await eventually(lambda: {n for n, _ in balancer._last} == {"edge-0"}, "readings of the 29 gone")
        assert {n for n, _ in balancer._demand} == {"edge-0"}
        policy = _policy()  # the limit is deleted: nothing global to measure
        balancer.rebalance()
        assert not balancer._last and not balancer._demand
    finally:
        running.cancel()
        await runner.cleanup()

"""Nothing dies silently: supervised loops restart, a publisher whose store watch fails fails
(to be restarted), and canary notifications go out once, after the revision that decides them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from policies import demo_policy
from prometheus_client import CollectorRegistry

from controlplane.cache import SnapshotCache
from controlplane.canary import CanaryController
from controlplane.controller.publisher import Publisher
from controlplane.policy import Policy, parse_document, with_document
from controlplane.store import Conflict, Revision
from controlplane.store.sqlite import SqliteStore
from controlplane.supervision import Supervisor
from controlplane.translate import Resources

BOUND_S = 20.0  # generous: these wait on conditions, never on a duration


async def eventually(check: Any, what: str) -> None:
    async with asyncio.timeout(BOUND_S):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_failing_loop_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    supervisor = Supervisor(registry, backoff_s=0.01, max_backoff_s=0.05)
    runs: list[int] = []
    steady = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 3:
            raise RuntimeError(f"boom {len(runs)}")
        steady.set()
        await asyncio.Event().wait()

    supervisor.start("flaky", flaky)
    try:
        async with asyncio.timeout(BOUND_S):
            await steady.wait()
        state = supervisor.states()["flaky"]
        assert state.up and state.restarts == 3 and state.last_error == "RuntimeError: boom 3"
        assert registry.get_sample_value("sluice_loop_restarts_total", {"loop": "flaky"}) == 3
        assert registry.get_sample_value("sluice_loop_up", {"loop": "flaky"}) == 1
        assert sum("loop flaky stopped (RuntimeError: boom" in r.getMessage() for r in caplog.records) == 3
        assert all(r.exc_info for r in caplog.records if "loop flaky stopped" in r.getMessage())
    finally:
        await supervisor.stop()


async def test_a_loop_that_returns_is_restarted_and_down_while_it_waits() -> None:
    supervisor = Supervisor(CollectorRegistry(), backoff_s=60.0)

    async def returns() -> None:
        return

    supervisor.start("returns", returns)
    try:
        await eventually(lambda: supervisor.states()["returns"].restarts == 1, "the loop to end")
        state = supervisor.states()["returns"]
        assert not state.up and "returned" in (state.last_error or "")
    finally:
        await supervisor.stop()


class BrokenWatch:
    """A store whose watch yields the current revision, then fails (as loading a geo table can)."""

    def __init__(self, broken: asyncio.Event) -> None:
        self._broken = broken

    async def watch(self) -> AsyncIterator[Revision]:
        yield Revision(1, Policy(), 0.0, "test", "one")
        await self._broken.wait()
        raise ConnectionError("the store went away")


async def test_a_publisher_whose_watch_fails_fails_instead_of_waiting_forever() -> None:
    broken = asyncio.Event()

    def translate(_: Policy, __: Any) -> Resources:
        return {}

    publisher = Publisher(BrokenWatch(broken), SnapshotCache(), translate, quiet_s=0.0, max_delay_s=0.0)  # type: ignore[arg-type]
    run = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.revision is not None, "revision 1 to be published")
        assert publisher.caught_up(1)
        broken.set()
        with pytest.raises(ExceptionGroup) as failed:
            async with asyncio.timeout(BOUND_S):
                await run
        assert isinstance(failed.value.exceptions[0], ConnectionError)
    finally:
        run.cancel()


async def test_a_publisher_survives_a_translator_that_raises() -> None:
    calls: list[int] = []

    class Store:
        async def watch(self) -> AsyncIterator[Revision]:
            yield Revision(1, Policy(), 0.0, "test", "one")
            await asyncio.Event().wait()

    def translate(_: Policy, __: Any) -> Resources:
        calls.append(1)
        raise KeyError("a translator bug")

    from controlplane.translate import ProxyGroup
    publisher = Publisher(Store(), SnapshotCache(), translate, quiet_s=0.0, max_delay_s=0.0)  # type: ignore[arg-type]
    publisher.join(ProxyGroup("edge", "127.0.0.1", 10000))
    run = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.revision is not None and calls, "revision 1 to be processed")
        assert not run.done()
    finally:
        run.cancel()


def _canary_policy(hook: str, canary_port: int, admin_policy: Policy | None = None) -> Policy:
    """The canary backend at `canary_port` must answer its readiness probe for the canary to start."""
    policy = admin_policy or Policy()
    spec = {"service": "classifier", "route": "infer", "stable": "classifier-v1", "canary": "classifier-v2",
            "steps": [50], "interval_s": 0.5, "thresholds": {"min_requests": 1},
            "webhooks": {"on_rollback": hook}}
    for raw in [*demo_policy(1, canary_port), {"kind": "Canary", "name": "c", "spec": spec}]:
        policy = with_document(policy, parse_document(raw))
    return policy


class ConflictOnce:
    """A store on which the commit that rolls the canary back loses once to another writer."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.lost = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit(self, policy: Policy, **kwargs: Any) -> Revision:
        status = policy.canary_status.get("c")
        if status is not None and status.state == "rolled_back" and not self.lost:
            self.lost = True
            raise Conflict(kwargs["expected"], kwargs["expected"])
        return await self._store.commit(policy, **kwargs)


async def test_rollback_webhook_fires_once_after_its_revision_commits(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "sluice.db")
    seen: list[str] = []  # the canary state in the store when each notification arrived
    reads = 0

    async def hook(request: web.Request) -> web.Response:
        current = await store.current()
        seen.append(current.policy.canary_status["c"].state)
        return web.Response()

    async def stats(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def prometheus(_: web.Request) -> web.Response:
        nonlocal reads
        reads += 1  # every read shows 10 more failed canary requests
        return web.Response(text=f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5",'
                                 f'envoy_cluster_name="classifier-v2"}} {10 * reads}\n')

    app = web.Application()
    app.router.add_post("/rollback", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/stats/prometheus", prometheus)
    app.router.add_get("/v2/health/ready", stats)  # the canary backend is ready
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await store.commit(_canary_policy(f"http://127.0.0.1:{port}/rollback", port), expected=None, actor="t",
                           message="m")
        racing = ConflictOnce(store)
        now = [1000.0]
        controller = CanaryController(racing, lambda: [f"127.0.0.1:{port}"], clock=lambda: now[0])  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            for _ in range(10):
                try:
                    await controller.tick(session)
                except Conflict:
                    pass  # run() retries on the next tick, as here
                now[0] += 1.0
                if (await store.current()).policy.canary_status["c"].state == "rolled_back" and seen:
                    break
        assert racing.lost
        assert seen == ["rolled_back"]
    finally:
        await runner.cleanup()
        await store.close()

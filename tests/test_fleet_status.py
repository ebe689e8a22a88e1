"""Fleet status at fleet size: /api/v1/proxies answers counts over every proxy and a page of
them, and `sluice status` shows a person the proxies to look at first, with 5,000 connected.

The proxies are entries in the control plane's real registry (what ADS streams put there), not
5,000 streams: the bench (bench/xds_scale.py) times the same requests against real streams."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from harness import PYTHON, ROOT, free_port
from prometheus_client import CollectorRegistry

from controlplane.admin.api import AdminApi
from controlplane.auth import Authenticator
from controlplane.resources import CLUSTER, ROUTE
from controlplane.store.sqlite import SqliteStore
from controlplane.translate import Options
from controlplane.xds import Fleet
from controlplane.xds.status import Nack, ProxyStatus, TypeStatus

FLEET, BEHIND, NACKED = 5000, 8, 2


def proxy(i: int) -> ProxyStatus:
    out = ProxyStatus(f"edge-{i:04d}", "edge", "edge/127.0.0.1:10000", i, protocol=("sotw", "delta")[i % 2])
    out.types[CLUSTER] = TypeStatus(acked="c1", acked_revision=0)
    out.types[ROUTE] = TypeStatus(acked="r1", acked_revision=0)
    if i < NACKED:
        out.types[ROUTE].last_nack = Nack("r2", "regex refused", 0.0)
    elif i < NACKED + BEHIND:
        out.types[ROUTE].acked_revision = None  # its first routes are still in flight
    return out


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[str]:
    store = await SqliteStore.open(tmp_path / "sluice.db")
    fleet = Fleet(CollectorRegistry())
    for i in range(FLEET):
        fleet.connect(proxy(i))

    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {}

    app = AdminApi(store, fleet, CollectorRegistry(), authenticator=Authenticator(store, "off"), options=Options(),
                   replica=dict, readiness=ready).app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()
    await store.close()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_counts_cover_the_fleet_and_pages_cover_each_proxy_once(admin: str) -> None:
    status, first = await get(f"{admin}/api/v1/proxies")
    assert status == 200
    assert first["summary"] == {"total": FLEET, "current": FLEET - BEHIND - NACKED, "behind": BEHIND,
                                "nacked": NACKED, "protocols": {"sotw": FLEET // 2, "delta": FLEET // 2}}
    assert len(first["proxies"]) == 1000  # a page by default, not the whole fleet
    seen: list[str] = []
    while len(seen) < FLEET:
        _, page = await get(f"{admin}/api/v1/proxies?offset={len(seen)}&limit=1500")
        assert page["proxies"], "a page ended before the fleet did"
        seen += [p["node_id"] for p in page["proxies"]]
    assert sorted(seen) == sorted(f"edge-{i:04d}" for i in range(FLEET))
    _, nacked = await get(f"{admin}/api/v1/proxies?state=nacked")
    assert [p["node_id"] for p in nacked["proxies"]] == ["edge-0000", "edge-0001"] and nacked["matching"] == NACKED
    status, bad = await get(f"{admin}/api/v1/proxies?state=broken")
    assert status == 400 and "state must be one of" in bad["error"]
    status, bad = await get(f"{admin}/api/v1/proxies?limit=many")
    assert status == 400 and "limit" in bad["error"]


async def test_cli_status_lists_what_needs_a_look_first(admin: str) -> None:
    run = await asyncio.to_thread(subprocess.run, [PYTHON, "-m", "sluice", "status", "--server", admin],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    lines = run.stdout.splitlines()
    assert lines[0].endswith(f"revision 0, {FLEET} proxies connected ({FLEET // 2} delta, {FLEET // 2} sotw), "
                             f"{FLEET - BEHIND - NACKED} converged, {BEHIND} behind, {NACKED} rejecting config")
    rows = [line.split()[0] for line in lines[2:2 + NACKED + BEHIND]]
    assert rows == [f"edge-{i:04d}" for i in range(NACKED + BEHIND)]  # refusing config first, then behind
    assert "edge-0000 rejected rds r2: regex refused" in lines
    assert lines[-1].startswith(f"... {FLEET - NACKED - BEHIND} more not shown")
    assert len(lines) < 40  # a screen, not 5,000 lines

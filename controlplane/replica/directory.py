"""Which proxies are connected to which replica, kept in Redis so that the quota leader can
measure the demand of every edge proxy, not only of those connected to itself.

Each replica owns one hash, `sluice:proxies:REPLICA` (node id -> cluster and admin address),
rewritten at every connect and disconnect and refreshed every interval; it expires three
intervals after its replica stops refreshing it, so a dead replica's proxies drop out.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from controlplane.store.redis_client import bounded
from controlplane.xds import ProxyRegistry, ProxyStatus

log = logging.getLogger(__name__)

PREFIX = "sluice:proxies:"

Entry = tuple[str, str]  # cluster, admin address


class ProxyDirectory:
    def __init__(self, client: Redis, replica: str, *, interval_s: float = 1.0) -> None:
        self._client = client
        self._key = PREFIX + replica
        self._interval_s = interval_s

    async def advertise(self, fleet: ProxyRegistry) -> None:
        """Keep this replica's entry equal to its connected proxies, until cancelled."""
        changed = asyncio.Event()
        fleet.on_change(changed.set)
        while True:
            changed.clear()
            entries: dict[FieldT, EncodableT] = {p.node_id: json.dumps([p.cluster, p.admin_address])
                                                 for p in fleet.proxies() if p.admin_address}
            try:
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.delete(self._key)
                    if entries:
                        pipe.hset(self._key, mapping=entries)
                        pipe.pexpire(self._key, int(self._interval_s * 3000))
                    await bounded(pipe.execute())
            except (RedisError, OSError) as exc:
                log.debug("cannot advertise proxies: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):  # not wait_for: see RedisLease.wait_lost
                    await changed.wait()

    async def read(self) -> dict[str, Entry]:
        """Every replica's proxies, by node id (a node seen on two replicas while it moves counts once)."""
        return await bounded(self._read())

    async def _read(self) -> dict[str, Entry]:
        keys = [key async for key in self._client.scan_iter(match=PREFIX + "*", count=100)]
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            tables: list[dict[str, str]] = await pipe.execute()
        entries: dict[str, Entry] = {}
        for table in tables:
            for node, raw in table.items():
                cluster, admin = json.loads(raw)
                entries.setdefault(node, (cluster, admin))
        return entries

    async def mirror(self, view: ProxyRegistry) -> None:
        """Keep `view` (a registry of its own) equal to the directory, until cancelled."""
        shown: dict[str, tuple[Entry, ProxyStatus]] = {}
        stream_ids = itertools.count(1)
        while True:
            try:
                entries = await self.read()
            except (RedisError, OSError) as exc:
                log.debug("cannot read the proxy directory: %s", exc)
            else:
                for node in [n for n, (entry, _) in shown.items() if entries.get(n) != entry]:
                    view.disconnect(shown.pop(node)[1])
                for node, entry in entries.items():
                    if node not in shown:
                        proxy = ProxyStatus(node, entry[0], "directory", next(stream_ids), admin_address=entry[1])
                        shown[node] = (entry, proxy)
                        view.connect(proxy)
            await asyncio.sleep(self._interval_s)

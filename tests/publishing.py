"""A publisher fed by an in-memory stream of revisions, serving ADS on a free port: what the
tests of the publisher and the snapshot cache set up around a real ADS server.

A module of its own (not conftest) so tests can import it by name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from controlplane.cache import SnapshotCache
from controlplane.controller.publisher import Publisher
from controlplane.groups import ProxyGroup
from controlplane.store import Revision
from controlplane.xds import AdsServer, Fleet, GrpcServer


class Revisions:
    """A store as the publisher sees it: a stream of revisions."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Revision] = asyncio.Queue()

    async def watch(self) -> AsyncIterator[Revision]:
        while True:
            yield await self.queue.get()


@dataclass
class Publishing:
    store: Revisions
    cache: SnapshotCache
    publisher: Publisher
    port: int


@asynccontextmanager
async def publishing(translator: Callable[..., Any]) -> AsyncIterator[Publishing]:
    """A running publisher (no debounce) and an ADS server whose default group is the edge's."""
    cache = SnapshotCache()
    store = Revisions()
    publisher = Publisher(store, cache, translator, quiet_s=0, max_delay_s=0)  # type: ignore[arg-type]
    server = GrpcServer(AdsServer(cache, Fleet(CollectorRegistry()), ProxyGroup("edge", "127.0.0.1", 10000)).methods())
    port = await server.start("127.0.0.1", 0)
    running = asyncio.create_task(publisher.run())
    try:
        yield Publishing(store, cache, publisher, port)
    finally:
        running.cancel()
        await server.stop()

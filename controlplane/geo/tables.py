"""Uploaded geo tables: kept in the store as content-addressed blobs (the policy names a table
by its digest, so revisions stay small and a rollback names the old table), and in memory here
for the translator, which reads them synchronously.

Every replica loads a table before publishing a revision that names it: the publisher is given
a `PublishingStore`, whose watch() hands a revision on only once its table is in memory.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

from controlplane.geotable.table import GeoTable, digest_of
from controlplane.policy import Policy
from controlplane.store import Revision

log = logging.getLogger(__name__)


class BlobStore(Protocol):
    async def put_blob(self, digest: str, data: bytes) -> None: ...

    async def get_blob(self, digest: str) -> bytes | None: ...


class GeoTables:
    def __init__(self, store: BlobStore, keep: int = 3) -> None:
        """`keep`: tables held in memory (the current one, and the last ones for rollbacks)."""
        assert keep >= 1
        self._store = store
        self._keep = keep
        self._tables: OrderedDict[str, GeoTable] = OrderedDict()

    def get(self, digest: str) -> GeoTable | None:
        return self._tables.get(digest)

    def _remember(self, digest: str, table: GeoTable) -> None:
        self._tables[digest] = table
        self._tables.move_to_end(digest)
        while len(self._tables) > self._keep:
            self._tables.popitem(last=False)

    async def put(self, table: GeoTable) -> str:
        """Stores the table (a no-op when the store has it already) and returns its digest."""
        blob = table.encode()
        digest = digest_of(blob)
        await self._store.put_blob(digest, blob)
        self._remember(digest, table)
        return digest

    async def load(self, digest: str) -> GeoTable | None:
        table = self._tables.get(digest)
        if table is not None:
            self._remember(digest, table)
            return table
        blob = await self._store.get_blob(digest)
        if blob is None:
            log.error("geo table %s is named by the policy but missing from the store", digest)
            return None
        if digest_of(blob) != digest:
            log.error("geo table %s in the store does not match its digest", digest)
            return None
        table = GeoTable.decode(blob)
        self._remember(digest, table)
        return table

    async def prepare(self, policy: Policy) -> None:
        geo = policy.geo.get("geo")
        if geo is not None and geo.table is not None:
            await self.load(geo.table)


class PublishingStore:
    """The store as the publisher sees it: watch() yields a revision once its geo table is loaded."""

    def __init__(self, store: Any, tables: GeoTables) -> None:
        self._store = store
        self._tables = tables

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def watch(self) -> AsyncIterator[Revision]:
        async for revision in self._store.watch():
            await self._tables.prepare(revision.policy)
            yield revision


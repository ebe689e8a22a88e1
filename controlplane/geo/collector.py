"""Deletes uploaded geo tables that no stored revision names.

Revisions are kept forever (history, rollback), so a table any revision ever named stays: a
rollback may need it. What goes are tables uploaded but never committed (an upload refused by
If-Match, a commit that failed), once they are older than the grace: an upload puts its table
and commits the revision naming it moments later, and a put renews the table's time, so the
grace covers an upload in progress. Deleting is conditional on that time in the store itself,
so every replica may collect at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from controlplane.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

GRACE_S = 3600.0
INTERVAL_S = 600.0


async def named_tables(store: Store) -> set[str]:
    """Every table digest a stored revision names."""
    current = await store.current()
    return {geo.table for revision in await store.history(current.number)
            for geo in revision.policy.geo.values() if geo.table is not None}


async def collect(store: Store, *, grace_s: float = GRACE_S, now: float | None = None) -> list[str]:
    """Delete the tables put before `now - grace_s` that no revision names; the digests deleted."""
    cutoff = (time.time() if now is None else now) - grace_s
    old = {digest for digest, put_at in (await store.blobs()).items() if put_at < cutoff}
    if not old:
        return []
    unnamed = sorted(old - await named_tables(store))
    deleted = [digest for digest in unnamed if await store.delete_blob(digest, put_before=cutoff)]
    for digest in deleted:
        log.info("geo table %s deleted: no revision names it", digest)
    return deleted


async def run(store: Store, *, interval_s: float = INTERVAL_S, grace_s: float = GRACE_S) -> None:
    while True:
        try:
            await collect(store, grace_s=grace_s)
        except StoreUnavailable as exc:  # nothing is lost by collecting later; readiness reports the store
            log.warning("geo tables not collected: %s", exc)
        await asyncio.sleep(interval_s)

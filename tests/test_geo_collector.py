"""Uploaded geo tables no stored revision names are collected, after a grace; a table any
revision names (the current one or an old one a rollback may need) never is. SQLite and Redis."""

from __future__ import annotations

import time

from policies import demo_policy

from controlplane.geo.collector import collect
from controlplane.policy import Policy, parse_document, with_document
from controlplane.store import open_store

OLD, NEW, NEVER = ("sha256:" + c * 64 for c in "abc")


def with_table(digest: str) -> Policy:
    policy = Policy()
    for raw in [*demo_policy(8001, 8002), {"kind": "Geo", "name": "geo", "spec": {"default_region": "eu",
                                                                                    "table": digest}}]:
        policy = with_document(policy, parse_document(raw))
    return policy


async def test_only_tables_no_revision_names_are_collected(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        for digest in (OLD, NEW, NEVER):
            await store.put_blob(digest, digest.encode())
        await store.commit(with_table(OLD), expected=0, actor="test", message="first table")
        await store.commit(with_table(NEW), expected=1, actor="test", message="second table")
        # Within the grace nothing goes, not even the table no revision names.
        assert await collect(store, grace_s=3600) == []
        assert await store.get_blob(NEVER) is not None
        # Past it: the unnamed one goes; the one only revision 1 names stays (rollback needs it).
        later = time.time() + 7200
        assert await collect(store, grace_s=3600, now=later) == [NEVER]
        assert set(await store.blobs()) == {OLD, NEW}
        assert await store.get_blob(OLD) == OLD.encode()
        # An upload of the same table again renews it: the grace counts from then.
        await store.put_blob(NEVER, NEVER.encode())
        assert await collect(store, grace_s=3600) == []
        assert await store.get_blob(NEVER) == NEVER.encode()
    finally:
        await store.close()

"""One suite, every store: revisions, optimistic concurrency, watch, audit log, tokens.

Runs against SQLite and against a real Redis (tests/redis_server.py)."""

from __future__ import annotations

import asyncio

import pytest
from policies import demo_policy

from controlplane.policy import Policy, parse_document, with_document
from controlplane.store import Conflict, TokenExists, TokenRecord, open_store


def demo() -> Policy:
    policy = Policy()
    for raw in demo_policy(8001, 8002):
        policy = with_document(policy, parse_document(raw))
    return policy


def moved(port: int) -> Policy:
    return with_document(demo(), parse_document(
        {"kind": "Backend", "name": "classifier-v1", "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}}))


async def test_revisions_conflict_and_reopen(store_url: str) -> None:
    store = await open_store(store_url)
    assert (await store.current()).number == 0
    first = await store.commit(demo(), expected=0, actor="alice", message="one")
    assert first.number == 1 and (await store.current()).number == 1
    with pytest.raises(Conflict) as caught:
        await store.commit(Policy(), expected=0, actor="bob", message="stale")
    assert caught.value.actual == 1
    assert (await store.current()).policy == demo()  # the rejected write changed nothing
    await store.commit(Policy(), expected=None, actor="bob", message="two")
    assert [(r.number, r.actor, r.message) for r in await store.history(10)] == [(2, "bob", "two"), (1, "alice", "one")]
    assert [r.number for r in await store.history(1)] == [2]
    assert (await store.revision(1)).policy == demo()
    assert (await store.revision(0)).policy == Policy()
    with pytest.raises(KeyError):
        await store.revision(3)
    await store.close()

    reopened = await open_store(store_url)
    current = await reopened.current()
    assert (current.number, current.message, current.policy) == (2, "two", Policy())
    await reopened.close()


async def test_concurrent_writers_never_lose_a_revision(store_url: str) -> None:
    """Compare-and-set: of writers that all expect the same revision exactly one wins."""
    store = await open_store(store_url)
    results = await asyncio.gather(*(store.commit(moved(9000 + i), expected=0, actor=f"w{i}", message="race")
                                     for i in range(8)), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1 and all(isinstance(r, Conflict) for r in results if r not in winners)
    # Without an expectation every writer lands, each on its own revision.
    await asyncio.gather(*(store.commit(moved(9100 + i), expected=None, actor=f"w{i}", message="pile")
                           for i in range(8)))
    assert [r.number for r in await store.history(100)] == list(range(9, 0, -1))
    await store.close()


async def test_watch_skips_to_newest(store_url: str) -> None:
    store = await open_store(store_url)
    watch = store.watch()
    assert (await anext(watch)).number == 0
    for i in range(3):
        await store.commit(demo() if i % 2 == 0 else Policy(), expected=None, actor="t", message="m")
    assert (await asyncio.wait_for(anext(watch), 1)).number == 3
    await store.close()


async def test_audit_log_has_who_when_what_and_the_diff(store_url: str) -> None:
    store = await open_store(store_url)
    await store.commit(demo(), expected=0, actor="alice", message="demo")
    await store.commit(moved(9999), expected=1, actor="bob", message="move v1")
    await store.add_token(TokenRecord("ci", "operator", "ab" * 32, 1.0, "carol"))
    second, first = (e for e in await store.audit(10) if e.action == "commit")
    assert (first.actor, first.revision, first.message) == ("alice", 1, "demo")
    assert {(d["kind"], d["name"], d["change"]) for d in first.diff or []} == {
        ("Backend", "classifier-v1", "added"), ("Backend", "classifier-v2", "added"),
        ("Service", "classifier", "added")}
    assert second.actor == "bob" and second.at >= first.at
    assert second.diff == [{"kind": "Backend", "name": "classifier-v1", "change": "changed",
                            "fields": [{"path": "spec.endpoints.0.port", "from": 8001, "to": 9999}]}]
    newest = (await store.audit(1))[0]
    assert (newest.action, newest.actor, newest.message) == ("token.create", "carol", "token ci (operator)")
    await store.close()


async def test_tokens_are_stored_as_digests(store_url: str) -> None:
    store = await open_store(store_url)
    token = TokenRecord("ops", "admin", "cd" * 32, 2.0, "bootstrap", expires_at=99.0)
    await store.add_token(token)
    with pytest.raises(TokenExists):
        await store.add_token(TokenRecord("ops", "viewer", "ef" * 32, 3.0, "bootstrap"))
    assert await store.tokens() == [token]
    assert token.view() == {"name": "ops", "role": "admin", "created_at": 2.0, "created_by": "bootstrap",
                            "expires_at": 99.0}
    assert await store.delete_token("ops", actor="alice") is True
    assert await store.delete_token("ops", actor="alice") is False
    assert await store.tokens() == []
    assert [(e.action, e.actor) for e in await store.audit(2)] == [
        ("token.delete", "alice"), ("token.create", "bootstrap")]
    await store.close()


async def test_blobs_round_trip_in_every_store(store_url: str) -> None:
    data = bytes(range(256)) * 1000
    store = await open_store(store_url)
    assert await store.get_blob("sha256:" + "0" * 64) is None
    await store.put_blob("sha256:" + "1" * 64, data)
    await store.put_blob("sha256:" + "1" * 64, b"ignored: a digest names one content")
    await store.close()
    reopened = await open_store(store_url)
    assert await reopened.get_blob("sha256:" + "1" * 64) == data
    await reopened.close()


async def test_a_blob_is_deleted_only_if_not_put_since(store_url: str) -> None:
    digest = "sha256:" + "2" * 64
    store = await open_store(store_url)
    try:
        await store.put_blob(digest, b"table")
        put_at = (await store.blobs())[digest]
        assert not await store.delete_blob(digest, put_before=put_at)  # put at that time: kept
        assert await store.get_blob(digest) == b"table"
        assert await store.delete_blob(digest, put_before=put_at + 1)
        assert await store.get_blob(digest) is None and digest not in await store.blobs()
        assert not await store.delete_blob(digest, put_before=put_at + 1)  # nothing left to delete
        await store.put_blob(digest, b"table")  # content-addressed: the same table may come again
        assert await store.get_blob(digest) == b"table"
    finally:
        await store.close()


async def test_budget_usage_adds_up_atomically_and_survives_reopening(store_url: str) -> None:
    store = await open_store(store_url)
    month = "acme-month/2026-12-01T00:00:00+01:00"
    assert await store.usage([month, "other"]) == {month: 0, "other": 0}
    assert await store.readings() == {}
    await store.add_usage({month: 40}, {"edge-1": '{"counters":{"a":40}}'})
    # Two keepers (replicas) adding at once: neither addition is lost.
    await asyncio.gather(store.add_usage({month: 5, "other": 1}, {}), store.add_usage({month: 7}, {}))
    await store.add_usage({}, {"edge-1": '{"counters":{"a":52}}', "edge-2": "{}"})
    await store.close()

    reopened = await open_store(store_url)
    assert await reopened.usage([month, "other"]) == {month: 52, "other": 1}
    assert await reopened.readings() == {"edge-1": '{"counters":{"a":52}}', "edge-2": "{}"}
    assert await reopened.usage([]) == {}
    await reopened.close()

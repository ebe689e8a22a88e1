"""The embedded store: numbered revisions, optimistic concurrency, durable across reopen."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from policies import demo_policy

from controlplane.policy import Policy, parse_document, with_document
from controlplane.store import Conflict, open_store


def _policy() -> Policy:
    policy = Policy()
    for raw in demo_policy(8001, 8002):
        policy = with_document(policy, parse_document(raw))
    return policy


async def test_revisions_and_conflict(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert (await store.current()).number == 0
    first = await store.commit(_policy(), expected=0, actor="t", message="one")
    assert first.number == 1
    with pytest.raises(Conflict) as caught:
        await store.commit(Policy(), expected=0, actor="t", message="stale")
    assert caught.value.actual == 1
    assert (await store.current()).policy == _policy()  # the rejected write changed nothing
    await store.commit(Policy(), expected=None, actor="t", message="two")
    assert [r.number for r in await store.history(10)] == [2, 1]
    assert (await store.revision(1)).policy == _policy()
    await store.close()

    reopened = await open_store(f"sqlite:///{tmp_path / 'a.db'}")
    current = await reopened.current()
    assert (current.number, current.message, current.policy) == (2, "two", Policy())
    await reopened.close()


async def test_watch_skips_to_newest(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'b.db'}")
    watch = store.watch()
    assert (await anext(watch)).number == 0
    for _ in range(3):
        await store.commit(_policy() if _ % 2 == 0 else Policy(), expected=None, actor="t", message="m")
    assert (await asyncio.wait_for(anext(watch), 1)).number == 3
    await store.close()


def test_bad_url() -> None:
    with pytest.raises(ValueError, match="unsupported store URL"):
        asyncio.run(open_store("mysql://x"))

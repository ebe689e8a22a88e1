"""The Redis store's own promises, against a real redis-server: replicas see each other's commits
(and catch up on a missed notification), an unreachable Redis fails writes fast while reads
keep working, the store reconnects by itself, its durability settings are checked, and no
acknowledged write is lost when Redis is SIGKILLed during a write storm."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from harness import ControlPlane, http, wait_until
from policies import demo_policy
from redis.asyncio import Redis
from redis_server import RedisServer, require_redis, running_redis

from controlplane.policy import Policy, parse_document, with_document
from controlplane.store import StoreUnavailable, open_store
from controlplane.store.redis_client import connect
from controlplane.store.redis_store import CHANNEL, CURRENT, revision_key


def backend_at(port: int, name: str = "b") -> Policy:
    return with_document(Policy(), parse_document(
        {"kind": "Backend", "name": name, "spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}}))


async def subscribers(raw: Redis, count: int) -> None:
    """Until `count` stores listen on the channel: a commit announced before then is missed."""
    while (await raw.pubsub_numsub(CHANNEL))[0][1] < count:
        await asyncio.sleep(0.02)


async def test_replicas_follow_each_other_by_pub_sub(redis_server: RedisServer) -> None:
    # b polls once an hour: within the test, only an announcement can tell it of a's commit.
    a = await open_store(redis_server.url, poll_s=3600)
    b = await open_store(redis_server.url, poll_s=3600)
    raw = connect(redis_server.url)
    await asyncio.wait_for(subscribers(raw, 2), 30)
    watch = b.watch()
    assert (await anext(watch)).number == 0
    committed = await a.commit(backend_at(9001), expected=0, actor="a", message="one")
    seen = await asyncio.wait_for(anext(watch), 30)
    assert (seen.number, seen.policy, seen.actor) == (1, committed.policy, "a")
    # b builds on what it saw: its next compare-and-set expects revision 1.
    assert (await b.commit(backend_at(9003), expected=1, actor="b", message="two")).number == 2
    await raw.aclose()
    for store in (a, b):
        await store.close()


async def test_a_lost_announcement_is_found_by_the_poll(redis_server: RedisServer) -> None:
    store = await open_store(redis_server.url, poll_s=0.2)
    watch = store.watch()
    assert (await anext(watch)).number == 0
    # A commit whose announcement was lost: written here without PUBLISH.
    raw = connect(redis_server.url)
    await raw.set(revision_key(1), json.dumps({"created_at": 1.0, "actor": "x", "message": "quiet",
                                                "policy": backend_at(9002).model_dump(mode="json")}))
    await raw.set(CURRENT, 1)
    assert (await asyncio.wait_for(anext(watch), 30)).message == "quiet"
    await raw.aclose()
    await store.close()


async def test_unreachable_redis_fails_writes_fast_and_reconnects(redis_server: RedisServer) -> None:
    store = await open_store(redis_server.url, poll_s=0.2)
    await store.commit(backend_at(9001), expected=0, actor="t", message="one")
    redis_server.proc.kill()
    with pytest.raises(StoreUnavailable, match=f"cannot reach Redis at redis://127.0.0.1:{redis_server.port}/0"):
        await asyncio.wait_for(store.commit(backend_at(9002), expected=None, actor="t", message="two"), 30)
    assert (await store.current()).number == 1  # reads come from the last loaded revision
    with pytest.raises(StoreUnavailable):
        await store.history(10)
    redis_server.restart()
    # The same store object, no reopen: the next write goes through.
    revision = await store.commit(backend_at(9002), expected=None, actor="t", message="two")
    assert revision.number == 2
    await store.close()


async def test_durability_settings_are_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running_redis(tmp_path, "--appendonly", "no", "--maxmemory-policy", "allkeys-lru") as server:
        with caplog.at_level(logging.WARNING, logger="controlplane.store.redis_store"):
            store = await open_store(server.url)
            await store.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert any("appendonly no: every policy revision is lost when Redis restarts" in w for w in warnings)
    assert any("maxmemory-policy allkeys-lru" in w for w in warnings)


async def test_the_required_settings_raise_no_warning(redis_server: RedisServer,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="controlplane.store.redis_store"):
        store = await open_store(redis_server.url)
        await store.close()
    assert caplog.records == []


def test_no_acknowledged_write_is_lost_when_redis_is_killed(tmp_path: Path, redis_server: RedisServer) -> None:
    """Writers hammer a real control plane; Redis is SIGKILLed mid-storm and restarted on the same
    AOF. Every write that got a 200 must be in Redis afterwards, with the content it was sent."""
    cp = ControlPlane.start(tmp_path, store=redis_server.url)
    acked: list[tuple[int, str, int]] = []  # revision, backend, port
    refused: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        port = 10_000 + n * 1000
        while not stop.is_set():
            port += 1
            status, _, body = http("PUT", f"{cp.url}/api/v1/backends/w{n}",
                                   {"spec": {"endpoints": [{"address": "127.0.0.1", "port": port}]}}, timeout=10)
            with lock:
                if status == 200:
                    acked.append((json.loads(body)["revision"], f"w{n}", port))
                else:
                    refused.append(status)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 40, 20, what="writes before the kill")
        redis_server.proc.kill()
        killed_with = len(acked)
        time.sleep(1.0)
        redis_server.restart()
        wait_until(lambda: len(acked) >= killed_with + 40, 20, what="writes after the restart")
        wait_until(lambda: "is back after" in cp.proc.log.read_text(), 5, what="the follower to reconnect")
    finally:
        stop.set()
        for t in threads:
            t.join()
        cp.proc.stop()
    assert refused and set(refused) == {503}, set(refused)  # the outage was seen, and only as 503

    async def check() -> int:
        store = await open_store(redis_server.url)
        current = (await store.current()).number
        for revision, name, port in acked:
            stored = (await store.revision(revision)).policy.backends[name]
            assert stored.endpoints[0].port == port, (revision, name, port)
        await store.close()
        return current

    current = asyncio.run(check())
    assert current >= max(r for r, _, _ in acked)
    assert len({r for r, _, _ in acked}) == len(acked)  # one acknowledged write per revision
    assert "writes fail until it is back" in cp.proc.log.read_text()


def test_demo_policy_on_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    """The control plane runs on Redis exactly as on SQLite (the API suite is store-independent)."""
    cp = ControlPlane.start(tmp_path, store=redis_server.url)
    try:
        assert cp.apply(*demo_policy(8001, 8002)) == (200, {"revision": 1, "changed": True})
        cp.restart()
        assert cp.revision() == 1
    finally:
        cp.proc.stop()


def test_without_redis_server_tests_skip_or_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("SLUICE_REQUIRE_REDIS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not on PATH"):
        require_redis()
    monkeypatch.setenv("SLUICE_REQUIRE_REDIS", "1")  # as .ci/run sets it
    with pytest.raises(pytest.fail.Exception, match="SLUICE_REQUIRE_REDIS=1 but redis-server is not on PATH"):
        require_redis()

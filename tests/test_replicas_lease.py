"""Leases in a real Redis: one holder at a time, takeover when the holder dies, none while
Redis is unreachable, and a deposed holder's fenced write is refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

from redis_server import RedisServer

from controlplane.replica import RedisLease
from controlplane.replica.lease import lease_key
from controlplane.replica.shares import SharesBoard
from controlplane.store.redis_client import connect

TTL = 1.0


@contextlib.asynccontextmanager
async def running(lease: RedisLease) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(lease.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def watch_holders(leases: list[RedisLease], seconds: float) -> list[tuple[float, list[int]]]:
    """Sample who holds the lease every 10 ms; every sample is taken at one instant of this loop."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append((time.monotonic(), [i for i, lease in enumerate(leases) if lease.held]))
        await asyncio.sleep(0.01)
    return samples


async def test_one_holder_and_takeover_when_it_dies(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    a, b = RedisLease(client, "job", "a", ttl_s=TTL), RedisLease(client, "job", "b", ttl_s=TTL)
    async with running(a) as task_a:
        await asyncio.wait_for(a.wait_held(), 2)
        async with running(b):
            samples = await watch_holders([a, b], 1.5)
            assert all(holders == [0] for _, holders in samples), "a renews; b never gets it"
            # a dies without releasing: its key must expire before b may take it.
            task_a.cancel()
            died = time.monotonic()
            await asyncio.wait_for(b.wait_held(), 30)
            # Not before a's key could have expired (a slower machine only makes this later).
            assert time.monotonic() - died > TTL * 0.5
            samples = await watch_holders([a, b], 0.5)
            assert all(holders == [1] for _, holders in samples)
            assert await client.get("sluice:lease:job") == b.token
    await client.aclose()


async def test_release_hands_over_at_once(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    a, b = RedisLease(client, "job", "a", ttl_s=TTL), RedisLease(client, "job", "b", ttl_s=TTL)
    async with running(a) as task_a:
        await asyncio.wait_for(a.wait_held(), 2)
        async with running(b):
            task_a.cancel()
            await a.release()
            # Released, not left to expire: the key is gone now, so b's next attempt takes it.
            assert await client.get(lease_key("job")) in (None, b.token)
            await asyncio.wait_for(b.wait_held(), 30)
    await client.aclose()


async def test_no_holder_while_redis_is_frozen(redis_server: RedisServer) -> None:
    """A holder that cannot renew stops acting before its key expires, so none acts twice."""
    client = connect(redis_server.url)
    a, b = RedisLease(client, "job", "a", ttl_s=TTL), RedisLease(client, "job", "b", ttl_s=TTL)
    async with running(a):
        await asyncio.wait_for(a.wait_held(), 2)
        async with running(b):
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            frozen = time.monotonic()
            try:
                lost = asyncio.create_task(a.wait_lost())
                samples = await watch_holders([a, b], 2.0)
                assert lost.done() and not a.held and not b.held
                assert max(t for t, holders in samples if holders) - frozen < TTL  # gave up within its TTL
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            samples = await watch_holders([a, b], 3.0)
            assert all(len(holders) <= 1 for _, holders in samples)
            assert samples[-1][1] in ([0], [1])  # someone holds it again once Redis is back
    await client.aclose()


async def test_a_deposed_holder_cannot_write(redis_server: RedisServer) -> None:
    client = connect(redis_server.url)
    a, b = RedisLease(client, "quota", "a", ttl_s=TTL), RedisLease(client, "quota", "b", ttl_s=TTL)
    board_a, board_b = SharesBoard(client, a), SharesBoard(client, b)
    async with running(a) as task_a:
        await asyncio.wait_for(a.wait_held(), 2)
        assert await board_a.publish({"edge-1": {"shared": 1.0}})
        assert not await board_b.publish({"edge-1": {"shared": 0.5}})  # b never held it
        task_a.cancel()
        async with running(b):
            await asyncio.wait_for(b.wait_held(), 3)
            # a was paused past its lease and wakes up believing it still leads: refused.
            assert not await board_a.publish({"edge-1": {"shared": 0.1}})
            assert await board_b.publish({"edge-1": {"shared": 0.5}})
            watch = board_b.watch()
            assert await asyncio.wait_for(anext(watch), 2) == {"edge-1": {"shared": 0.5}}
            await watch.aclose()
    await client.aclose()

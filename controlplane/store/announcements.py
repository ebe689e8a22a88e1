"""Wake-ups from a Redis pub/sub channel, with a poll as the safety net for lost messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from redis.asyncio import Redis

from controlplane.store.redis_client import bounded


async def announcements(client: Redis, channel: str, poll_s: float) -> AsyncGenerator[None, None]:
    """Yields once subscribed, then after every message on `channel` and at least every `poll_s`.
    Raises the connection's error (RedisError or OSError) when the subscription breaks.
    Use it under `contextlib.aclosing`, so that its reader stops with the consumer.

    The channel is read by a blocking read in a task of its own: redis-py's read with a timeout
    can swallow a cancellation that arrives as the timeout fires (and then never return), while
    a blocking read is cancelled cleanly."""
    async with client.pubsub() as pubsub:
        await bounded(pubsub.subscribe(channel))
        woken = asyncio.Event()

        async def read() -> None:
            while True:
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                woken.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                yield
                waiter = asyncio.ensure_future(woken.wait())
                try:
                    await asyncio.wait([waiter, reader], timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if reader.done():
                    reader.result()
                woken.clear()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

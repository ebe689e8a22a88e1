"""How sluice talks to Redis: one way to connect, and one deadline for every call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlparse

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

T = TypeVar("T")

# An unreachable or frozen Redis is an error within this, so writes fail fast.
OPERATION_TIMEOUT_S = 2.0


def connect(url: str) -> Redis:
    """A client that fails fast: an unreachable Redis is an error within a second, and a command
    is retried once, at once, only to replace a pooled connection that went stale.

    Its socket_timeout stays unset on purpose: redis-py sends under asyncio.wait_for when it is
    set, and on Python 3.11 that can swallow the cancellation of the calling task (which then
    hangs). Every call goes through `bounded` instead."""
    return Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=None, retry=Retry(NoBackoff(), 1),
                          decode_responses=True)


async def bounded(operation: Awaitable[T]) -> T:
    """Await a Redis call under OPERATION_TIMEOUT_S; raises TimeoutError (an OSError) past it."""
    async with asyncio.timeout(OPERATION_TIMEOUT_S):
        return await operation


def where(url: str) -> str:
    """The URL without credentials, for logs and error messages."""
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 6379}{parsed.path or '/0'}"

"""Leases: work that must run once among the replicas (the quota balancer, a canary controller)
runs only on the replica holding its lease.

In Redis a lease is a key whose value is the holder's token, set with SET NX PX and renewed,
only by its holder, by a Lua script that checks the token. The holder counts the lease as
its own until `ttl * (1 - SAFETY)` after it *sent* the last successful SET or renewal; the key
lives `ttl` after Redis *ran* it, which is later. So a holder cut off from Redis stops acting
before any other replica can take the key, and two replicas never act at once (as long as
their clocks run at about the same rate; no clock needs to agree with another).
Writes made on behalf of a lease should also check the token in Redis (see `holder_script`)
so that a holder paused past its lease (a stop-the-world pause) cannot write afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from controlplane.store.redis_client import bounded

log = logging.getLogger(__name__)

SAFETY = 0.2  # share of the TTL a holder gives up early, for scheduling delays on its side

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease(Protocol):
    name: str

    @property
    def held(self) -> bool:
        """Whether this replica holds the lease now; check right before acting."""
        ...

    @property
    def token(self) -> str:
        """This replica's token for the lease: the value of the key while it holds it."""
        ...

    async def run(self) -> None:
        """Acquire and renew the lease until cancelled."""
        ...

    async def wait_held(self) -> None: ...

    async def wait_lost(self) -> None: ...

    async def release(self) -> None:
        """Give the lease up now (a clean stop), so another replica need not wait out the TTL."""
        ...


class SoleLease:
    """The lease of a replica that has no peers (the SQLite store): always held."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._forever = asyncio.Event()

    @property
    def held(self) -> bool:
        return True

    @property
    def token(self) -> str:
        return "sole"

    async def run(self) -> None:
        await self._forever.wait()

    async def wait_held(self) -> None:
        return

    async def wait_lost(self) -> None:
        await self._forever.wait()

    async def release(self) -> None:
        return


def lease_key(name: str) -> str:
    return f"sluice:lease:{name}"


class RedisLease:
    def __init__(self, client: Redis, name: str, holder: str, *, ttl_s: float = 3.0) -> None:
        self.name = name
        self.key = lease_key(name)
        self._client = client
        self._token = f"{holder}/{secrets.token_hex(8)}"  # unique even if a holder id is reused
        self._ttl_ms = int(ttl_s * 1000)
        self._valid_until = 0.0  # monotonic
        self._changed = asyncio.Event()
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    @property
    def token(self) -> str:
        return self._token

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _attempt(self) -> None:
        sent = time.monotonic()
        was_held = self.held
        try:
            if was_held:
                ok = bool(await bounded(self._renew(keys=[self.key], args=[self._token, self._ttl_ms])))
            else:
                ok = bool(await bounded(self._client.set(self.key, self._token, nx=True, px=self._ttl_ms)))
        except (RedisError, OSError) as exc:
            # Unknown outcome: keep counting down what we had; the lease lapses on its own.
            log.debug("lease %s: %s", self.name, exc)
            return
        if ok:
            self._valid_until = sent + self._ttl_ms / 1000 * (1 - SAFETY)
            if not was_held:
                log.info("lease %s acquired (%s)", self.name, self._token)
                self._notify()
        elif was_held:
            self._valid_until = 0.0
            log.warning("lease %s lost to another replica", self.name)
            self._notify()

    async def run(self) -> None:
        interval = self._ttl_ms / 1000 / 3  # renew a third of the way through the TTL
        while True:
            await self._attempt()
            await asyncio.sleep(interval)

    async def wait_held(self) -> None:
        while not self.held:
            await self._changed.wait()

    async def wait_lost(self) -> None:
        while self.held:
            changed = self._changed
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, and this is cancelled at the end of every term.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._valid_until - time.monotonic())):
                    await changed.wait()

    async def release(self) -> None:
        if not self.held:
            return
        self._valid_until = 0.0
        self._notify()
        with contextlib.suppress(RedisError, OSError):
            await bounded(self._release(keys=[self.key], args=[self._token]))


def holder_script(body: str) -> str:
    """A Lua script that runs `body` only while KEYS[1] (a lease key) holds ARGV[1] (the token);
    `body` numbers its own keys and arguments from 2. Returns 0 when the lease is not held."""
    return f"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n{body}\n"


async def run_while_held(lease: Lease, work: Callable[[], Awaitable[None]]) -> None:
    """Run `work()` during each term of `lease` and cancel it when the lease is lost (someone
    else runs `lease.run()`). Work that fails ends this with its exception."""
    while True:
        await lease.wait_held()
        log.info("lease %s held: starting its work", lease.name)
        task = asyncio.ensure_future(work())
        lost = asyncio.ensure_future(lease.wait_lost())
        try:
            done, _ = await asyncio.wait([task, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, lost):
                t.cancel()
            await asyncio.gather(task, lost, return_exceptions=True)
        if task in done:
            task.result()
            await lease.wait_lost()  # work that finished stays finished for this term
        log.info("lease %s lost: its work stopped", lease.name)

"""The global rate-limit shares, as the quota leader computed them, for every replica to apply.

One key, `sluice:quota:shares` (node -> limit -> fraction, as JSON), written only while the
writer's lease token is in the lease key (checked in the same Lua script: a deposed leader's
late write is refused), and announced on a channel; readers also poll it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from controlplane.replica.lease import RedisLease, holder_script
from controlplane.store.announcements import announcements
from controlplane.store.redis_client import bounded

log = logging.getLogger(__name__)

SHARES = "sluice:quota:shares"
CHANNEL = "sluice:quota:shares"

Shares = dict[str, dict[str, float]]

_WRITE = holder_script("""
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[3], '')
return 1
""")


class SharesBoard:
    def __init__(self, client: Redis, lease: RedisLease, *, poll_s: float = 1.0) -> None:
        self._client = client
        self._lease = lease
        self._poll_s = poll_s
        self._write = client.register_script(_WRITE)

    async def publish(self, shares: Shares) -> bool:
        """Store `shares` if this replica's lease is still held in Redis; False if it is not."""
        raw = json.dumps(shares, sort_keys=True, separators=(",", ":"))
        return bool(await bounded(self._write(keys=[self._lease.key, SHARES], args=[self._lease.token, raw, CHANNEL])))

    async def watch(self) -> AsyncIterator[Shares]:
        """The shares now and after each change; waits out Redis outages (the last shares stay)."""
        seen: str | None = None
        while True:
            try:
                async with contextlib.aclosing(announcements(self._client, CHANNEL, self._poll_s)) as wakeups:
                    async for _ in wakeups:
                        raw = cast(str | None, await bounded(self._client.get(SHARES)))  # decoded replies
                        if raw is not None and raw != seen:
                            seen = raw
                            yield json.loads(raw)
            except (RedisError, OSError) as exc:
                log.debug("shares: %s", exc)
                await asyncio.sleep(self._poll_s)

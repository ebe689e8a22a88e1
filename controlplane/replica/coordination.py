"""This replica's link to its peers, beside the policy store: leases and the quota balancer's
shared state. Chosen by the store URL: a SQLite store has no peers, a Redis store shares its Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlparse

from redis.asyncio import Redis

from controlplane.policy import Policy
from controlplane.replica.directory import ProxyDirectory
from controlplane.replica.everyone import EveryProxy
from controlplane.replica.lease import Lease, RedisLease, SoleLease
from controlplane.replica.quota import ApplyShares, QuotaLeader
from controlplane.replica.shares import SharesBoard
from controlplane.store.redis_client import connect
from controlplane.xds import ProxyRegistry

QUOTA_LEASE = "quota-balancer"


class Coordination:
    def __init__(self, replica: str, client: Redis | None, *, lease_ttl_s: float) -> None:
        self.replica = replica
        self._client = client
        self._lease_ttl_s = lease_ttl_s
        self._leases: dict[str, Lease] = {}

    @classmethod
    def for_store(cls, url: str, replica: str, *, lease_ttl_s: float = 3.0) -> Coordination:
        shared = urlparse(url).scheme in ("redis", "rediss")
        return cls(replica, connect(url) if shared else None, lease_ttl_s=lease_ttl_s)

    @property
    def shared(self) -> bool:
        return self._client is not None

    def lease(self, name: str) -> Lease:
        """The lease of work that must run on one replica at a time (ask before `run`)."""
        if name not in self._leases:
            self._leases[name] = (SoleLease(name) if self._client is None
                                  else RedisLease(self._client, name, self.replica, ttl_s=self._lease_ttl_s))
        return self._leases[name]

    def leases(self) -> dict[str, bool]:
        """Which leases this replica holds now."""
        return {name: lease.held for name, lease in sorted(self._leases.items())}

    def quota(self, fleet: ProxyRegistry, policy: Callable[[], Policy | None], apply: ApplyShares,
              *, interval_s: float) -> QuotaLeader:
        lease = self.lease(QUOTA_LEASE)
        if self._client is None:
            return QuotaLeader(lease, fleet, policy, apply, interval_s=interval_s)
        assert isinstance(lease, RedisLease)
        shared = (ProxyDirectory(self._client, self.replica, interval_s=interval_s),
                  SharesBoard(self._client, lease, poll_s=interval_s))
        return QuotaLeader(lease, fleet, policy, apply, interval_s=interval_s, shared=shared)

    def every_proxy(self, local: ProxyRegistry, *, interval_s: float = 1.0) -> EveryProxy:
        """Every replica's proxies (run it to keep it current)."""
        return EveryProxy(local, None if self._client is None
                          else ProxyDirectory(self._client, self.replica, interval_s=interval_s))

    async def run(self) -> None:
        """Acquire and renew every lease asked for so far, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for lease in self._leases.values():
                tasks.create_task(lease.run())

    async def close(self) -> None:
        for lease in self._leases.values():
            await lease.release()
        if self._client is not None:
            await self._client.aclose()

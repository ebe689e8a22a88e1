"""The global rate-limit balancer, run once among the replicas.

With one replica (SQLite) the lease is always held: the balancer reads the demand of the
proxies connected here and hands their shares straight to the local publisher, as before.

With several (Redis) the holder of the `quota-balancer` lease measures every edge proxy of
every replica (they are listed in the proxy directory; each Envoy's admin address must be
reachable from every replica), and writes the shares to Redis, fenced by its lease token.
Every replica, the leader included, applies the shares it reads back from Redis to the
proxies connected to it. So followers keep serving the last shares while there is no leader
(Redis down, leader dead), and a proxy's share never comes from two balancers at once.
A new leader starts from an even split and follows the measured demand after one interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from controlplane.policy import Policy
from controlplane.quota.balancer import Balancer
from controlplane.replica.directory import ProxyDirectory
from controlplane.replica.lease import Lease
from controlplane.replica.shares import Shares, SharesBoard
from controlplane.xds import ProxyRegistry

log = logging.getLogger(__name__)

ApplyShares = Callable[[Shares], None]


class QuotaLeader:
    def __init__(self, lease: Lease, fleet: ProxyRegistry, policy: Callable[[], Policy | None], apply: ApplyShares,
                 *, interval_s: float, shared: tuple[ProxyDirectory, SharesBoard] | None = None) -> None:
        self._lease = lease
        self._fleet = fleet
        self._policy = policy
        self._apply = apply
        self._interval_s = interval_s
        self._shared = shared
        self._balancer: Balancer | None = None

    def rebalance(self) -> None:
        """A new revision was published: the leader recomputes at once (global limits may have changed)."""
        if self._balancer is not None:
            self._balancer.rebalance()

    async def run(self) -> None:
        """Follow the shared shares and lead while the lease is held (its holder runs the lease)."""
        async with asyncio.TaskGroup() as tasks:
            if self._shared is not None:
                directory, board = self._shared
                tasks.create_task(directory.advertise(self._fleet))
                tasks.create_task(self._follow(board))
            while True:
                await self._lease.wait_held()
                await self._lead()

    async def _follow(self, board: SharesBoard) -> None:
        async for shares in board.watch():
            self._apply(shares)

    async def _lead(self) -> None:
        """One term: from acquiring the lease until losing it."""
        log.info("quota balancer: leading (lease %s)", self._lease.name)
        if self._shared is None:
            self._balancer = Balancer(self._fleet, self._policy, self._apply, interval_s=self._interval_s)
            work = [self._balancer.run()]
        else:
            directory, board = self._shared
            view = ProxyRegistry()  # every replica's proxies
            writer = _FencedWriter(board)
            self._balancer = Balancer(view, self._policy, writer.publish, interval_s=self._interval_s)
            work = [self._balancer.run(), directory.mirror(view), writer.run()]
        tasks = [asyncio.create_task(w) for w in work]
        lost = asyncio.create_task(self._lease.wait_lost())
        try:
            done, _ = await asyncio.wait([lost, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._balancer = None
            for task in (lost, *tasks):
                task.cancel()
            await asyncio.gather(lost, *tasks, return_exceptions=True)
        for task in done - {lost}:
            task.result()  # a term's work ends only by failing: raise what failed it
        log.info("quota balancer: following (lease %s lost)", self._lease.name)


class _FencedWriter:
    """Writes the newest shares to Redis (the board checks the lease); a failed write is retried."""

    def __init__(self, board: SharesBoard) -> None:
        self._board = board
        self._pending: Shares | None = None
        self._wake = asyncio.Event()

    def publish(self, shares: Shares) -> None:
        self._pending = shares
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            shares = self._pending
            if shares is None:
                continue
            try:
                if not await self._board.publish(shares):
                    # The lease is gone in Redis; it lapses here at its next renewal.
                    log.warning("quota balancer: shares refused, the lease is no longer ours")
            except (RedisError, OSError) as exc:
                log.warning("quota balancer: cannot write shares (%s); retrying", exc)
                await asyncio.sleep(0.5)
                if self._pending is shares:
                    self._wake.set()
                continue
            if self._pending is shares:
                self._pending = None

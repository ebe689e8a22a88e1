"""Reads each edge Envoy's demand from the ratelimit filter's own counters and gives every
proxy its share of each global limit.

Demand is the filter's `requests` counter per policy (requests that matched the policy,
admitted or not), read from each Envoy's admin `/stats`, as a smoothed rate. The shares are
recomputed every interval and at every connect and disconnect, and pushed (as ECDS overrides
for the one proxy) only when they move by more than a few percent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from controlplane.policy import Policy
from controlplane.quota.shares import moved, split
from controlplane.xds import ProxyRegistry, ProxyStatus

log = logging.getLogger(__name__)

STAT_PREFIX = "wasmcustom.sluice_ratelimit."


class Balancer:
    def __init__(self, fleet: ProxyRegistry, policy: Callable[[], Policy | None],
                 publish: Callable[[dict[str, dict[str, float]]], None],
                 *, interval_s: float = 1.0, floor: float = 0.1, smoothing: float = 0.5) -> None:
        self._fleet = fleet
        self._policy = policy
        self._publish = publish
        self._interval_s = interval_s
        self._floor = floor
        self._smoothing = smoothing
        self._last: dict[tuple[str, str], tuple[float, float]] = {}  # (node, policy) -> (counter, time)
        self._demand: dict[tuple[str, str], float] = {}  # requests/s, smoothed
        self._shares: dict[str, dict[str, float]] = {}
        fleet.on_change(self.rebalance)

    def _edges(self) -> list[ProxyStatus]:
        return [p for p in self._fleet.proxies() if p.cluster == "edge"]

    def rebalance(self) -> None:
        policy = self._policy()
        global_limits = [] if policy is None else sorted(
            n for n, limit in policy.ratelimits.items() if limit.scope == "global")
        if not global_limits:
            # Called at every connect and disconnect: without global limits there is nothing to
            # split, and listing the fleet each time would cost O(N²) while thousands connect.
            self._last.clear()
            self._demand.clear()
            if self._shares:
                self._shares = {}
                self._publish({})
            return
        nodes = sorted({p.node_id for p in self._edges()})
        # Readings of proxies that left and of limits no longer global are dropped: with
        # proxies coming and going (autoscaling, restarts under new names) they would pile up.
        wanted = set(nodes), set(global_limits)
        for readings in (self._last, self._demand):
            for key in [k for k in readings if k[0] not in wanted[0] or k[1] not in wanted[1]]:
                del readings[key]
        shares: dict[str, dict[str, float]] = {n: {} for n in nodes} if global_limits else {}
        for limit in global_limits:
            fractions = split({n: self._demand.get((n, limit), 0.0) for n in nodes}, self._floor)
            for node, fraction in fractions.items():
                shares[node][limit] = fraction
        if shares.keys() != self._shares.keys() or any(
                moved(self._shares[n], shares[n]) for n in shares):
            self._shares = shares
            log.info("global limit shares: %s", {n: {k: round(v, 3) for k, v in s.items()} for n, s in shares.items()})
            self._publish(shares)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(0.2, self._interval_s / 2))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(self._interval_s)
                policy = self._policy()
                if policy is None or not any(r.scope == "global" for r in policy.ratelimits.values()):
                    continue
                edges = [p for p in self._edges() if p.admin_address]
                await asyncio.gather(*(self._measure(session, p) for p in edges))
                self.rebalance()

    async def _measure(self, session: aiohttp.ClientSession, proxy: ProxyStatus) -> None:
        try:
            async with session.get(f"http://{proxy.admin_address}/stats",
                                   params={"format": "json", "filter": "sluice_ratelimit"}) as response:
                stats = (await response.json(content_type=None))["stats"]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            log.debug("cannot read demand from %s: %s", proxy.node_id, exc)
            return
        now = time.monotonic()
        for stat in stats:
            name = stat.get("name", "")
            if not (name.startswith(STAT_PREFIX) and name.endswith(".requests")):
                continue
            limit = name[len(STAT_PREFIX):-len(".requests")]
            key = (proxy.node_id, limit)
            value = float(stat.get("value", 0))
            previous = self._last.get(key)
            self._last[key] = (value, now)
            if previous is None or now <= previous[1] or value < previous[0]:
                continue  # first reading, or the Envoy restarted and its counters did too
            rate = (value - previous[0]) / (now - previous[1])
            old = self._demand.get(key)
            self._demand[key] = rate if old is None else self._smoothing * rate + (1 - self._smoothing) * old

"""How long a policy revision takes from its write until the last connected proxy runs it.

How many proxies fully run each revision is kept as counts, moved as each proxy's revision
moves, so an ACK costs the same with a thousand proxies connected as with one.
"""

from __future__ import annotations

import collections
import time

from prometheus_client import CollectorRegistry, Histogram

from controlplane.xds.status import ProxyStatus

WRITES_KEPT = 100  # a proxy stuck on a NACK must not grow the pending writes forever


class Convergence:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._written_at: dict[int, float] = {}
        self._runs: dict[int, int] = {}  # stream -> the revision its proxy fully runs (-1: none)
        self._running: collections.Counter[int] = collections.Counter()  # revision -> proxies
        self._seconds = Histogram(
            "sluice_convergence_seconds", "Policy revision written until the last connected proxy ACKed it",
            registry=registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def revision_written(self, revision: int, at: float) -> None:
        if not self._runs:
            return  # nothing to converge; a proxy connecting later is not a convergence time
        self._written_at[revision] = at
        while len(self._written_at) > WRITES_KEPT:
            del self._written_at[min(self._written_at)]

    def joined(self, proxy: ProxyStatus) -> None:
        self._count(proxy)

    def moved(self, proxy: ProxyStatus) -> None:
        """The proxy's state changed: count it at the revision it now fully runs."""
        if proxy.stream_id in self._runs:  # not once it has left
            self._count(proxy)

    def _count(self, proxy: ProxyStatus) -> None:
        revision = proxy.revision()
        now = -1 if revision is None else revision
        if self._runs.get(proxy.stream_id) == now:
            return  # most ACKs: an ACK of a type that changed nothing it runs as a whole
        before = self._forget(proxy)
        self._runs[proxy.stream_id] = now
        self._running[now] += 1
        if now != before:
            self._observe()

    def left(self, proxy: ProxyStatus) -> None:
        if self._forget(proxy) is not None:
            self._observe()  # the proxy that was last to converge may be this one

    def _forget(self, proxy: ProxyStatus) -> int | None:
        before = self._runs.pop(proxy.stream_id, None)
        if before is not None:
            self._running[before] -= 1
            if not self._running[before]:
                del self._running[before]
        return before

    def _observe(self) -> None:
        if not self._written_at or not self._running:
            return
        slowest = min(self._running)
        for revision in sorted(self._written_at):
            if slowest < revision:
                break
            self._seconds.observe(time.time() - self._written_at.pop(revision))

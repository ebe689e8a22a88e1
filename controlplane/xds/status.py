"""What each connected proxy has: per type, the version it ACKed, the one in flight, its last NACK."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from controlplane.cache.snapshot import ENCODES
from controlplane.resources import PUSH_ORDER, SHORT


@dataclass
class Nack:
    version: str
    message: str
    at: float


@dataclass
class TypeStatus:
    acked: str | None = None
    acked_revision: int | None = None
    in_flight: str | None = None
    in_flight_revision: int | None = None
    last_nack: Nack | None = None


@dataclass
class ProxyStatus:
    node_id: str
    cluster: str
    group: str
    stream_id: int
    protocol: str = "sotw"
    admin_address: str | None = None  # host:port of the proxy's admin interface, from node metadata
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def of(self, type_url: str) -> TypeStatus:
        return self.types.setdefault(type_url, TypeStatus())

    def revision(self) -> int | None:
        """The policy revision this proxy fully runs, if every type it uses ACKed the same one."""
        revisions = {t.acked_revision for t in self.types.values()}
        return revisions.pop() if len(revisions) == 1 else None

    def view(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "cluster": self.cluster,
            "group": self.group,
            "protocol": self.protocol,
            "admin_address": self.admin_address,
            "connected_at": self.connected_at,
            "revision": self.revision(),
            "types": {
                SHORT[t]: {
                    "acked_version": s.acked,
                    "acked_revision": s.acked_revision,
                    "in_flight_version": s.in_flight,
                    "last_nack": None if s.last_nack is None else {
                        "version": s.last_nack.version, "message": s.last_nack.message, "at": s.last_nack.at,
                    },
                }
                for t in PUSH_ORDER if (s := self.types.get(t)) is not None
            },
        }


class Fleet:
    """Connected proxies, and the control plane's xDS metrics.

    How many proxies fully run each revision is kept as counts, moved as each proxy's
    revision moves, so an ACK costs the same with a thousand proxies connected as with one.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._proxies: dict[int, ProxyStatus] = {}
        self._listeners: list[Callable[[], None]] = []
        self._written_at: dict[int, float] = {}
        self._runs: dict[int, int] = {}  # stream -> the revision its proxy fully runs (-1: none)
        self._running: collections.Counter[int] = collections.Counter()  # revision -> proxies
        self.pushes = Counter("sluice_xds_pushes", "xDS responses sent", ["type"], registry=registry)
        self.acks = Counter("sluice_xds_acks", "xDS ACKs received", ["type"], registry=registry)
        self.nacks = Counter("sluice_xds_nacks", "xDS NACKs received", ["type"], registry=registry)
        self.convergence = Histogram(
            "sluice_convergence_seconds", "Policy revision written until the last connected proxy ACKed it",
            registry=registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        registry.register(ENCODES)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every connect and disconnect."""
        self._listeners.append(listener)

    def connect(self, proxy: ProxyStatus) -> None:
        self._proxies[proxy.stream_id] = proxy
        self._recount(proxy)
        for listener in self._listeners:
            listener()

    def disconnect(self, proxy: ProxyStatus) -> None:
        if self._proxies.pop(proxy.stream_id, None) is not None:
            self._recount(proxy)
            self._observe_convergence()  # the proxy that was last to converge may be this one
            for listener in self._listeners:
                listener()

    def proxies(self) -> list[ProxyStatus]:
        return sorted(self._proxies.values(), key=lambda p: (p.cluster, p.node_id, p.stream_id))

    def revision_written(self, revision: int, at: float) -> None:
        if not self._proxies:
            return  # nothing to converge; a proxy connecting later is not a convergence time
        self._written_at[revision] = at
        while len(self._written_at) > 100:  # a proxy stuck on a NACK must not grow this forever
            del self._written_at[min(self._written_at)]

    def expects(self, proxy: ProxyStatus, type_url: str) -> None:
        """The proxy needs this type and has not asked for it yet: it has not converged."""
        proxy.of(type_url)
        self._recount(proxy)

    def has(self, proxy: ProxyStatus, type_url: str, version: str, revision: int) -> None:
        """The proxy runs exactly this version of the type (a new revision left it unchanged,
        or the proxy reconnected with it)."""
        status = proxy.of(type_url)
        if (status.acked, status.acked_revision) != (version, revision):
            status.acked, status.acked_revision = version, revision
            self._recount(proxy)

    def sent(self, proxy: ProxyStatus, type_url: str, version: str, revision: int) -> None:
        status = proxy.of(type_url)
        status.in_flight, status.in_flight_revision = version, revision
        self.pushes.labels(SHORT[type_url]).inc()
        self._recount(proxy)  # a type sent for the first time: not converged until ACKed

    def answered(self, proxy: ProxyStatus, type_url: str, error: str | None) -> None:
        status = proxy.of(type_url)
        if error:
            status.last_nack = Nack(status.in_flight or "", error, time.time())
            self.nacks.labels(SHORT[type_url]).inc()
        else:
            status.acked, status.acked_revision = status.in_flight, status.in_flight_revision
            self.acks.labels(SHORT[type_url]).inc()
        status.in_flight = status.in_flight_revision = None
        self._recount(proxy)

    def _recount(self, proxy: ProxyStatus) -> None:
        """Move the proxy to the count of the revision it now fully runs."""
        before = self._runs.pop(proxy.stream_id, None)
        if before is not None:
            self._running[before] -= 1
            if not self._running[before]:
                del self._running[before]
        if proxy.stream_id not in self._proxies:
            return
        revision = proxy.revision()
        now = -1 if revision is None else revision
        self._runs[proxy.stream_id] = now
        self._running[now] += 1
        if now != before:
            self._observe_convergence()

    def _observe_convergence(self) -> None:
        if not self._written_at or not self._running:
            return
        slowest = min(self._running)
        for revision in sorted(self._written_at):
            if slowest < revision:
                break
            self.convergence.observe(time.time() - self._written_at.pop(revision))

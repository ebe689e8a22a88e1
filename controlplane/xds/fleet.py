"""What the ADS streams report, handed to the part that keeps each kind of fact: who is
connected (ProxyRegistry), the xDS counters (XdsMetrics), how long revisions take to reach
every proxy (Convergence). Each proxy's per-type state is its ProxyStatus."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from controlplane.xds.convergence import Convergence
from controlplane.xds.metrics import XdsMetrics
from controlplane.xds.registry import ProxyRegistry
from controlplane.xds.status import Nack, ProxyStatus


class Fleet:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = ProxyRegistry()
        self.convergence = Convergence(registry)
        self._metrics = XdsMetrics(registry)

    def connect(self, proxy: ProxyStatus) -> None:
        self.convergence.joined(proxy)
        self.connected.connect(proxy)

    def disconnect(self, proxy: ProxyStatus) -> None:
        self.convergence.left(proxy)
        self.connected.disconnect(proxy)

    def expects(self, proxy: ProxyStatus, type_url: str) -> bool:
        """The proxy needs this type and has not asked for it yet: it has not converged.
        Returns whether the proxy's state changed (then `moved` must follow)."""
        if type_url in proxy.types:
            return False
        proxy.of(type_url)
        return True

    def has(self, proxy: ProxyStatus, type_url: str, version: str, revision: int) -> bool:
        """The proxy runs exactly this version of the type (a new revision left it unchanged,
        or the proxy reconnected with it). Returns whether that changed its state."""
        status = proxy.of(type_url)
        if status.acked == version and status.acked_revision == revision:
            return False
        status.acked, status.acked_revision = version, revision
        return True

    def sent(self, proxy: ProxyStatus, type_url: str, version: str, revision: int, size: int) -> bool:
        """A response of `size` bytes went to the proxy. Returns whether the proxy's state
        changed: a type sent for the first time leaves it unconverged until ACKed."""
        new = type_url not in proxy.types
        status = proxy.of(type_url)
        status.in_flight, status.in_flight_revision = version, revision
        self._metrics.sent(type_url, size)
        return new

    def moved(self, proxy: ProxyStatus) -> None:
        """Count the proxy at the revision it now runs, after what `expects`, `has` or `sent` changed."""
        self.convergence.moved(proxy)

    def answered(self, proxy: ProxyStatus, type_url: str, error: str | None) -> None:
        status = proxy.of(type_url)
        if error:
            status.last_nack = Nack(status.in_flight or "", error, time.time())
        else:
            status.acked, status.acked_revision = status.in_flight, status.in_flight_revision
        status.in_flight = status.in_flight_revision = None
        self._metrics.answered(type_url, error)
        self.convergence.moved(proxy)

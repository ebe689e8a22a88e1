"""The ADS server's counters: responses sent and their bytes, ACKs and NACKs per type, and
(shared by every stream) the response bodies the cache encoded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from controlplane.cache.snapshot import ENCODES
from controlplane.resources import SHORT


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._pushes = Counter("sluice_xds_pushes", "xDS responses sent", ["type"], registry=registry)
        self._bytes = Counter("sluice_xds_sent_bytes", "bytes of xDS responses sent (before gRPC framing)", ["type"],
                              registry=registry)
        self._acks = Counter("sluice_xds_acks", "xDS ACKs received", ["type"], registry=registry)
        self._nacks = Counter("sluice_xds_nacks", "xDS NACKs received", ["type"], registry=registry)
        registry.register(ENCODES)
        # Children looked up once each: a push to a thousand proxies counts a thousand times.
        self._children: dict[tuple[Counter, str], Counter] = {}

    def _child(self, counter: Counter, type_url: str) -> Counter:
        child = self._children.get((counter, type_url))
        if child is None:
            child = self._children[counter, type_url] = counter.labels(SHORT[type_url])
        return child

    def sent(self, type_url: str, size: int) -> None:
        self._child(self._pushes, type_url).inc()
        self._child(self._bytes, type_url).inc(size)

    def answered(self, type_url: str, error: str | None) -> None:
        self._child(self._nacks if error else self._acks, type_url).inc()

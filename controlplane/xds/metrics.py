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

    def sent(self, type_url: str, size: int) -> None:
        self._pushes.labels(SHORT[type_url]).inc()
        self._bytes.labels(SHORT[type_url]).inc(size)

    def answered(self, type_url: str, error: str | None) -> None:
        (self._nacks if error else self._acks).labels(SHORT[type_url]).inc()

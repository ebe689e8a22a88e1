"""The ADS server's counters: responses sent and their bytes, ACKs and NACKs per type, and
(shared by every stream) the response bodies the cache encoded.

Kept as plain integers and read out when scraped: a push to a thousand proxies counts a
thousand times, and a prometheus_client Counter takes a lock for each."""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.cache.snapshot import ENCODES
from controlplane.resources import SHORT

COUNTERS = {  # name (without _total) -> help
    "sluice_xds_pushes": "xDS responses sent",
    "sluice_xds_sent_bytes": "bytes of xDS responses sent (before gRPC framing)",
    "sluice_xds_acks": "xDS ACKs received",
    "sluice_xds_nacks": "xDS NACKs received",
}


class XdsMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in COUNTERS}
        self._pushes, self._bytes = self._counts["sluice_xds_pushes"], self._counts["sluice_xds_sent_bytes"]
        self._acks, self._nacks = self._counts["sluice_xds_acks"], self._counts["sluice_xds_nacks"]
        registry.register(self)
        registry.register(ENCODES)

    def sent(self, type_url: str, size: int) -> None:
        self._pushes[type_url] += 1
        self._bytes[type_url] += size

    def answered(self, type_url: str, error: str | None) -> None:
        (self._nacks if error else self._acks)[type_url] += 1

    def collect(self) -> Iterator[Metric]:
        for name, counts in self._counts.items():
            family = CounterMetricFamily(name, COUNTERS[name], labels=["type"])
            for type_url, value in sorted(counts.items()):
                family.add_metric([SHORT[type_url]], value)
            yield family

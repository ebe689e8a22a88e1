"""Every replica's proxies, for work that must read every Envoy whichever replica it is
connected to (the canary controller sums each Envoy's counters). With one replica that is its
own registry; with several, the proxy directory mirrored into a registry of its own, kept warm
on every replica so that whichever takes the canary lease reads every Envoy from its first tick."""

from __future__ import annotations

from controlplane.replica.directory import ProxyDirectory
from controlplane.xds import ProxyRegistry, ProxyStatus


class EveryProxy:
    def __init__(self, local: ProxyRegistry, directory: ProxyDirectory | None) -> None:
        self._directory = directory
        self._registry = local if directory is None else ProxyRegistry()

    def proxies(self) -> list[ProxyStatus]:
        return self._registry.proxies()

    def edge_admin_addresses(self) -> list[str]:
        return [p.admin_address for p in self.proxies() if p.cluster == "edge" and p.admin_address]

    async def run(self) -> None:
        """Follow the directory until cancelled (with one replica there is nothing to follow)."""
        if self._directory is not None:
            await self._directory.mirror(self._registry)

"""Proxy groups: the proxies that receive identical resources. The translator translates for a
group, the cache keeps a snapshot per group, the xDS server says which group a proxy is in."""

from __future__ import annotations

from dataclasses import dataclass

SIDECAR = "sidecar"  # the node.cluster of sidecar proxies


@dataclass(frozen=True)
class ProxyGroup:
    """Same role and same listening address (and a sidecar's local backend and outbound port,
    from its node metadata)."""

    role: str
    listen_address: str
    listen_port: int
    local_backend: tuple[str, int] | None = None
    outbound_port: int | None = None

    def __post_init__(self) -> None:
        if self.role == SIDECAR and self.local_backend is None:
            raise ValueError("a sidecar proxy needs its local backend (node metadata backend_address, backend_port)")

    @property
    def key(self) -> str:
        key = f"{self.role}@{self.listen_address}:{self.listen_port}"
        if self.local_backend is not None:
            key += f"->{self.local_backend[0]}:{self.local_backend[1]}"
        if self.outbound_port is not None:
            key += f",outbound:{self.outbound_port}"
        return key

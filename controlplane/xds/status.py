"""What each connected proxy has: per type, the version it ACKed, the one in flight, its last NACK."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

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

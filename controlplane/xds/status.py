"""What each connected proxy has: per type, the version it ACKed, the one in flight, its last NACK."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from controlplane.resources import PUSH_ORDER, SHORT


@dataclass(slots=True)
class Nack:
    version: str
    message: str
    at: float


@dataclass(slots=True)
class TypeStatus:
    acked: str | None = None
    acked_revision: int | None = None
    in_flight: str | None = None
    in_flight_revision: int | None = None
    last_nack: Nack | None = None


@dataclass(slots=True)  # one per connected proxy: no per-instance dict
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
        status = self.types.get(type_url)
        if status is None:
            status = self.types[type_url] = TypeStatus()
        return status

    def revision(self) -> int | None:
        """The policy revision this proxy fully runs, if every type it uses ACKed the same one."""
        found: int | None = None
        for status in self.types.values():  # on every ACK: no set built
            if status.acked_revision is None or (found is not None and status.acked_revision != found):
                return None
            found = status.acked_revision
        return found

    def state(self, revision: int) -> str:
        """`nacked` while it runs an older version of a type than the one it refused last,
        else `current` when it runs `revision`, else `behind`."""
        if any(t.last_nack is not None and t.last_nack.version != t.acked for t in self.types.values()):
            return "nacked"
        return "current" if self.revision() == revision else "behind"

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


STATES = ("current", "behind", "nacked")


def fleet_page(proxies: list[ProxyStatus], revision: int, state: str | None, offset: int, limit: int) -> dict[str, Any]:
    """Counts over every proxy, and the views of one page of them (of one state, if given):
    what a status request answers without writing out thousands of proxies."""
    counts = dict.fromkeys(STATES, 0)
    protocols: dict[str, int] = {}
    chosen = []
    for p in proxies:
        s = p.state(revision)
        counts[s] += 1
        protocols[p.protocol] = protocols.get(p.protocol, 0) + 1
        if state is None or s == state:
            chosen.append(p)
    return {
        "revision": revision,
        "summary": {"total": len(proxies), **counts, "protocols": protocols},
        "matching": len(chosen), "offset": offset, "limit": limit,
        "proxies": [p.view() for p in chosen[offset:offset + limit]],
    }

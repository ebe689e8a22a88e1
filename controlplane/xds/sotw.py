"""State-of-the-world sessions: every response carries all of a type's (requested) resources.

Per type, a response is sent only when the proxy has answered the previous one (ACK or NACK)
and the snapshot differs from what was last sent, so a NACK never causes a re-send loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from controlplane.cache import Snapshot
from controlplane.xds.session import Session, Settled


@dataclass
class _Subscription:
    names: frozenset[str] | None = None  # None: every resource of the type
    answered: bool = True  # the proxy answered our last response (or never had one)
    rejected: bool = False  # ...and that answer was a NACK
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    nonce: str = ""


class SotwSession(Session[DiscoveryRequest]):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._subs: dict[str, _Subscription] = {}

    def receive(self, request: DiscoveryRequest) -> None:
        names = frozenset(request.resource_names) if request.resource_names else None
        sub = self._subs.get(request.type_url)
        if sub is None:
            # A proxy reconnecting says which version it already runs (of the names it asks
            # for): nothing is re-sent for it.
            sub = self._subs[request.type_url] = _Subscription(
                sent_version=request.version_info or None, sent_names=names)
        elif request.response_nonce != sub.nonce:
            return  # answers a response that a newer one has replaced
        elif not sub.answered:
            sub.rejected = self.answered(
                request.type_url, request.error_detail.message if request.HasField("error_detail") else None)
        # else: the answered response's nonce again, with new names (EDS after a CDS change)
        sub.names = names
        sub.answered = True

    def settled(self, type_url: str, snapshot: Snapshot) -> Settled:
        sub = self._subs.get(type_url)
        if sub is None:
            return Settled.NOT_SUBSCRIBED
        current = snapshot.types[type_url]
        if sub.sent_version == current.version and sub.sent_names == sub.names:
            if not sub.answered:
                return Settled.IN_FLIGHT
            return Settled.REJECTED if sub.rejected else Settled.YES
        return Settled.NEEDS_PUSH if sub.answered else Settled.IN_FLIGHT

    def requested(self, type_url: str) -> frozenset[str] | None:
        sub = self._subs.get(type_url)
        return None if sub is None else sub.names

    def push(self, type_url: str, snapshot: Snapshot) -> bytes:
        sub = self._subs[type_url]
        current = snapshot.types[type_url]
        response = current.sotw(sub.names)
        sub.sent_version, sub.sent_names, sub.nonce, sub.answered = current.version, sub.names, response.nonce, False
        return response.data

    def held(self, type_url: str) -> frozenset[str] | None:
        return self._subs[type_url].sent_names

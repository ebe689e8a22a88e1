"""State-of-the-world sessions.

Per type, a response is sent only when the proxy has answered the previous one (ACK or NACK)
and the snapshot differs from what was last sent, so a NACK never causes a re-send loop.

Clusters, listeners and scopes go whole: in state of the world, a resource missing from a
response of those types is removed. Route configurations go one by one, only those that
changed (the protocol lets RDS responses carry any subset of the names asked for), so a change
to one service's routes sends that service's route configuration and nothing else, and a route
configuration the proxy refused is not sent again while the others keep updating.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from controlplane.cache import Snapshot
from controlplane.cache.snapshot import TypeSnapshot
from controlplane.resources import ROUTE
from controlplane.xds.session import Session, Settled

PER_RESOURCE = (ROUTE,)
NOTHING: frozenset[str] = frozenset()  # one object for every stream's empty sets (CPython makes one each)


@dataclass(slots=True)  # a few per stream, thousands of streams
class _Subscription:
    names: frozenset[str] | None = None  # None: every resource of the type
    answered: bool = True  # the proxy answered our last response (or never had one)
    rejected: bool = False  # ...and that answer was a NACK
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    nonce: str = ""
    # PER_RESOURCE types: what the proxy has (or was last sent), name -> version (replaced,
    # never changed in place: it may be the snapshot's own mapping); what the last response
    # carried; the versions it refused.
    known: dict[str, str] = field(default_factory=dict)
    sending: frozenset[str] = frozenset()
    refused: dict[str, str] = field(default_factory=dict)
    synced: str | None = None  # the type version `known` has every asked-for resource of


class SotwSession(Session[DiscoveryRequest]):
    __slots__ = ("_subs",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._subs: dict[str, _Subscription] = {}

    def _receive(self, request: DiscoveryRequest) -> None:
        names = frozenset(request.resource_names) if request.resource_names else None
        sub = self._subs.get(request.type_url)
        if sub is not None and names == sub.names:
            names = sub.names  # the same names again (every ACK repeats them): keep the shared set
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
            for name in sub.sending:
                if sub.rejected:
                    sub.refused[name] = sub.known[name]
                else:
                    sub.refused.pop(name, None)
            sub.sending = NOTHING
        # else: the answered response's nonce again, with new names (EDS after a CDS change)
        if names != sub.names and request.type_url in PER_RESOURCE:
            sub.synced = None
            if names is not None:  # unsubscribed: gone from the proxy
                sub.known = {n: v for n, v in sub.known.items() if n in names}
                sub.refused = {n: v for n, v in sub.refused.items() if n in names}
        sub.names = names
        sub.answered = True

    def _changed(self, sub: _Subscription, current: TypeSnapshot) -> list[str]:
        """PER_RESOURCE types: the names asked for whose version the proxy lacks."""
        if sub.sent_version is not None:
            if sub.sent_version == current.version:  # reconnected with what it runs now
                sub.known = {n: v for n, v in current.versions.items() if sub.names is None or n in sub.names}
            sub.sent_version = None
        step = current.step
        if step is not None and sub.synced == step.since:  # the proxy has the previous version
            return [n for n in step.changed if sub.names is None or n in sub.names]
        wanted = current.versions.keys() if sub.names is None else sub.names & current.versions.keys()
        return sorted(n for n in wanted if sub.known.get(n) != current.versions[n])

    def settled(self, type_url: str, snapshot: Snapshot) -> Settled:
        sub = self._subs.get(type_url)
        if sub is None:
            return Settled.NOT_SUBSCRIBED
        current = snapshot.types[type_url]
        if type_url in PER_RESOURCE:
            if not sub.answered:
                return Settled.IN_FLIGHT
            if sub.synced != current.version:
                if self._changed(sub, current):
                    return Settled.NEEDS_PUSH
                sub.synced = current.version
                sub.known = current.held(sub.known)
                if sub.names is not None:
                    sub.names = current.shared(sub.names)
            refused = any(current.versions.get(n) == v for n, v in sub.refused.items())
            return Settled.REJECTED if refused else Settled.YES
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
        if type_url in PER_RESOURCE:
            sub.sending = frozenset(self._changed(sub, current))
            sub.known = current.held({**sub.known, **{n: current.versions[n] for n in sub.sending}})
            sub.synced = current.version
            response = current.sotw(sub.sending)
        else:
            response = current.sotw(sub.names)
            sub.sent_version, sub.sent_names = current.version, sub.names
        if sub.names is not None:
            sub.names = sub.sent_names = current.shared(sub.names)
        sub.nonce, sub.answered = response.nonce, False
        return response.data

    def held(self, type_url: str, current: TypeSnapshot) -> frozenset[str] | None:
        sub = self._subs[type_url]
        return current.held_names(sub.known) if type_url in PER_RESOURCE else sub.sent_names

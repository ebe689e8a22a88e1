"""Incremental (delta) sessions: only resources whose version changed, plus removals.

Per-resource versions are content hashes, so a proxy that reconnects with
initial_resource_versions receives only what changed while it was away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

from controlplane.cache import Snapshot
from controlplane.cache.snapshot import TypeSnapshot
from controlplane.xds.session import Session, Settled

WILDCARD = "*"


@dataclass(slots=True)  # a few per stream, thousands of streams
class _Subscription:
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    # What the proxy has (or was last sent): name -> version. Replaced, never changed in place:
    # it may be the snapshot's own mapping, shared by every stream that has all of the type.
    known: dict[str, str] = field(default_factory=dict)
    answered: bool = True
    sending: tuple[str, ...] = ()  # what the last response carried
    refused: dict[str, str] = field(default_factory=dict)  # versions the proxy refused, by name
    nonce: str = ""
    # The type version `known` was last found (or made) equal to; a subscription change resets
    # it. Spares a diff over every resource each time the stream wakes.
    synced: str | None = None


class DeltaSession(Session[DeltaDiscoveryRequest]):
    __slots__ = ("_subs",)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._subs: dict[str, _Subscription] = {}

    def _receive(self, request: DeltaDiscoveryRequest) -> None:
        sub = self._subs.get(request.type_url)
        if sub is None:
            sub = self._subs[request.type_url] = _Subscription(known=dict(request.initial_resource_versions))
            # A first request naming nothing is the legacy wildcard subscription.
            sub.wildcard = not request.resource_names_subscribe
        # A stale or repeated nonce is no answer, but the subscription changes it carries count.
        if request.response_nonce and request.response_nonce == sub.nonce and not sub.answered:
            rejected = self.answered(
                request.type_url, request.error_detail.message if request.HasField("error_detail") else None)
            for name in sub.sending:
                if rejected:
                    sub.refused[name] = sub.known[name]
                else:
                    sub.refused.pop(name, None)
            sub.answered, sub.sending = True, ()
        if not (request.resource_names_subscribe or request.resource_names_unsubscribe):
            return
        sub.synced = None
        subscribe = frozenset(request.resource_names_subscribe)
        unsubscribe = frozenset(request.resource_names_unsubscribe)
        sub.wildcard = (sub.wildcard or WILDCARD in subscribe) and WILDCARD not in unsubscribe
        sub.names = (sub.names | (subscribe - {WILDCARD})) - unsubscribe
        if unsubscribe:
            sub.known = {n: v for n, v in sub.known.items() if n not in unsubscribe}
            sub.refused = {n: v for n, v in sub.refused.items() if n not in unsubscribe}

    def _diff(self, sub: _Subscription, type_url: str, snapshot: Snapshot) -> tuple[list[str], list[str]]:
        current = snapshot.types[type_url]
        step = current.step
        if step is not None and sub.synced == step.since:  # the proxy has the previous version
            return ([n for n in step.changed if sub.wildcard or n in sub.names],
                    [n for n in step.removed if n in sub.known])
        wanted = current.versions.keys() if sub.wildcard else sub.names & current.versions.keys()
        changed = sorted(n for n in wanted if sub.known.get(n) != current.versions[n])
        removed = sorted(n for n in sub.known if n not in current.versions)
        return changed, removed

    def settled(self, type_url: str, snapshot: Snapshot) -> Settled:
        sub = self._subs.get(type_url)
        if sub is None:
            return Settled.NOT_SUBSCRIBED
        if not sub.answered:
            return Settled.IN_FLIGHT
        current = snapshot.types[type_url]
        version = current.version
        if sub.synced != version:
            changed, removed = self._diff(sub, type_url, snapshot)
            if changed or removed:
                return Settled.NEEDS_PUSH
            sub.synced = version
            sub.known, sub.names = current.held(sub.known), current.shared(sub.names)
        # One resource refused leaves the others updating; the proxy runs an older version of it.
        refused = any(current.versions.get(n) == v for n, v in sub.refused.items())
        return Settled.REJECTED if refused else Settled.YES

    def requested(self, type_url: str) -> frozenset[str] | None:
        sub = self._subs.get(type_url)
        return None if sub is None or sub.wildcard else sub.names

    def push(self, type_url: str, snapshot: Snapshot) -> bytes:
        sub = self._subs[type_url]
        current = snapshot.types[type_url]
        changed, removed = self._diff(sub, type_url, snapshot)
        response = current.delta(tuple(changed), tuple(removed))
        known = {**sub.known, **{n: current.versions[n] for n in changed}}
        for name in removed:
            del known[name]
            sub.refused.pop(name, None)
        sub.known = current.held(known)
        sub.names = current.shared(sub.names)
        sub.sending = tuple(changed)
        sub.nonce, sub.answered, sub.synced = response.nonce, False, current.version
        return response.data

    def held(self, type_url: str, current: TypeSnapshot) -> frozenset[str] | None:
        return current.held_names(self._subs[type_url].known)

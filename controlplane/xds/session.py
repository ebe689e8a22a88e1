"""What one ADS stream owes its proxy, whichever protocol variant it speaks.

Make-before-break, both ways. Types go in PUSH_ORDER, one response at a time, and a type
waits until the ones before it are settled (answered at the current version, every EDS/RDS
resource requested; endpoints alone may go while clusters are in flight), so a route never
reaches a proxy before the clusters and endpoints it needs. And a cluster the policy removed
stays on the proxy (with its endpoints) while a listener or route configuration the proxy
runs, or is being sent, still routes to it: it goes in the first push after the proxy ACKed
routes that no longer use it.
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from controlplane.cache import Snapshot, TypeSnapshot
from controlplane.resources import CLUSTER, DEPENDENT, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE
from controlplane.xds.fleet import Fleet
from controlplane.xds.status import ProxyStatus

log = logging.getLogger(__name__)

Request = TypeVar("Request")

ROUTING = (LISTENER, ROUTE)  # the types whose resources route to clusters


def _union(sets: list[frozenset[str]]) -> frozenset[str]:
    """Their union: the largest of them when it holds the others, as it usually does, so that
    thousands of streams hold the snapshot's one set rather than a copy each."""
    if not sets:
        return frozenset()
    largest = max(sets, key=len)
    return largest if all(s <= largest for s in sets) else frozenset().union(*sets)


class Settled(enum.Enum):
    NOT_SUBSCRIBED = "not subscribed"
    YES = "settled"
    REJECTED = "the proxy refused this version; it is not sent again"
    IN_FLIGHT = "waiting for the proxy's answer"
    NEEDS_PUSH = "needs a push"


class Session(ABC, Generic[Request]):
    __slots__ = ("proxy", "_fleet", "_running", "_sending", "_view", "_noted", "_used", "_kept", "_moved", "more")

    def __init__(self, proxy: ProxyStatus, fleet: Fleet) -> None:
        self.proxy = proxy
        self._fleet = fleet
        # Per routing type: clusters that the proxy's config routes to, and the in-flight one's.
        self._running: dict[str, frozenset[str]] = {}
        self._sending: dict[str, frozenset[str]] = {}
        self._view: Snapshot | None = None  # what this proxy was last offered, kept clusters included
        # Per type found settled: for which version object and revision, whether the proxy
        # asked for all of it, and whether it runs it (not refused). Until the proxy's next
        # request of that type or a new version, a wake-up (the ACK of another type, a change
        # elsewhere, a new revision that left this type as it was) re-checks nothing of it.
        self._noted: dict[str, tuple[TypeSnapshot, int, bool, bool]] = {}
        # The clusters `_running` and `_sending` name together (None: to be recomputed), and
        # which of them the last cluster version checked lacked.
        self._used: frozenset[str] | None = None
        self._kept: tuple[frozenset[str], TypeSnapshot, frozenset[str]] | None = None
        self._moved = False  # the proxy's status changed: convergence recounts it once
        self.more = False  # the last response may be followed by another before the proxy answers

    def receive(self, request: Request) -> None:
        """Take a request: an ACK, a NACK, or a change of subscription."""
        self._noted.pop(request.type_url, None)  # type: ignore[attr-defined]
        self._receive(request)

    @abstractmethod
    def _receive(self, request: Request) -> None: ...

    @abstractmethod
    def settled(self, type_url: str, snapshot: Snapshot) -> Settled: ...

    @abstractmethod
    def requested(self, type_url: str) -> frozenset[str] | None:
        """Names the proxy subscribed to, None for a wildcard subscription."""

    @abstractmethod
    def push(self, type_url: str, snapshot: Snapshot) -> bytes:
        """Record what is sent and return the encoded response."""

    @abstractmethod
    def held(self, type_url: str, current: TypeSnapshot) -> frozenset[str] | None:
        """The names of `type_url` (now `current`) the proxy has once it applies what it was
        last sent (None: all)."""

    def answered(self, type_url: str, error: str | None) -> bool:
        """Record an ACK or NACK; returns whether it was a NACK."""
        if error:
            log.warning("proxy %s rejected %s: %s", self.proxy.node_id, type_url, error)
        self._fleet.answered(self.proxy, type_url, error)
        sending = self._sending.pop(type_url, None)
        if sending is not None:
            # After a NACK the proxy may run the old config, or (delta) part of the new one.
            self._set_running(type_url, self._running.get(type_url, frozenset()) | sending if error else sending)
        return bool(error)

    def _set_running(self, type_url: str, clusters: frozenset[str]) -> None:
        if self._running.get(type_url) != clusters:
            self._running[type_url] = clusters
            self._used = None

    def _offer(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot plus the removed clusters this proxy's routes still use."""
        view = snapshot
        if self._view is not None and CLUSTER in snapshot.types:
            clusters = snapshot.types[CLUSTER]
            if self._used is None:
                self._used = _union([*self._running.values(), *self._sending.values()])
            if self._kept is None or self._kept[0] is not self._used or self._kept[1] is not clusters:
                self._kept = (self._used, clusters, self._used - clusters.resources.keys())
            if kept := self._kept[2]:
                view = snapshot.keeping(kept, self._view)
        self._view = view
        return view

    def response(self, snapshot: Snapshot) -> bytes | None:
        """The next response this proxy should get, if any (one at a time, in PUSH_ORDER).
        `more` says afterwards whether another may follow before the proxy answers."""
        try:
            return self._next(self._offer(snapshot))
        finally:
            if self._moved:
                self._moved = False
                self._fleet.moved(self.proxy)

    def _next(self, view: Snapshot) -> bytes | None:
        self.more = False
        clusters_in_flight = False
        for type_url in PUSH_ORDER:
            if type_url not in view.types:
                continue
            if clusters_in_flight and type_url != ENDPOINT:
                return None
            current = view.types[type_url]
            noted = self._noted.get(type_url)
            if noted is not None and noted[0] is current:
                # Settled at this version, and nothing of this type came or went since: only
                # the revision it counts for may be new.
                if noted[1] != view.revision:
                    if noted[3]:
                        self._moved |= self._fleet.has(self.proxy, type_url, current.version, view.revision)
                    self._noted[type_url] = (current, view.revision, noted[2], noted[3])
                if noted[2]:
                    continue
                return None
            state = self.settled(type_url, view)
            if state is Settled.NOT_SUBSCRIBED:
                if type_url in DEPENDENT and view.types[type_url].resources:
                    # The proxy asks for these once it has the clusters or listeners naming
                    # them; until then it has not converged, and nothing after them is sent.
                    self._moved |= self._fleet.expects(self.proxy, type_url)
                    return None
                continue
            if state in (Settled.YES, Settled.REJECTED):
                if state is Settled.YES:
                    self._moved |= self._fleet.has(self.proxy, type_url, current.version, view.revision)
                    if type_url in ROUTING:
                        self._set_running(type_url, current.used(self.held(type_url, current)))
                complete = self._complete(type_url, view)
                self._noted[type_url] = (current, view.revision, complete, state is Settled.YES)
                if complete:
                    continue
                return None  # the proxy has yet to ask for resources the next types depend on
            if state is Settled.IN_FLIGHT:
                if type_url == CLUSTER:
                    # Envoy ACKs new clusters once they are warm, that is once it has their
                    # endpoints: those go out meanwhile, and nothing after them.
                    clusters_in_flight = True
                    continue
                return None
            if clusters_in_flight and not self._complete(type_url, view):
                return None  # wait for the proxy to ask for the new clusters' endpoints
            response = self.push(type_url, view)
            self._noted.pop(type_url, None)  # in flight now, whatever was found settled before
            if type_url in ROUTING:
                self._sending[type_url] = current.used(self.held(type_url, current))
                self._used = None
            self._moved |= self._fleet.sent(self.proxy, type_url, view.version(type_url), view.revision, len(response))
            # Only endpoints may follow clusters in flight; any other push waits for its answer.
            self.more = type_url == CLUSTER
            return response
        return None

    def _complete(self, type_url: str, snapshot: Snapshot) -> bool:
        names = self.requested(type_url)
        if type_url not in (ENDPOINT, ROUTE) or names is None:
            return True
        return snapshot.types[type_url].names <= names

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


class Settled(enum.Enum):
    NOT_SUBSCRIBED = "not subscribed"
    YES = "settled"
    REJECTED = "the proxy refused this version; it is not sent again"
    IN_FLIGHT = "waiting for the proxy's answer"
    NEEDS_PUSH = "needs a push"


class Session(ABC, Generic[Request]):
    def __init__(self, proxy: ProxyStatus, fleet: Fleet) -> None:
        self.proxy = proxy
        self._fleet = fleet
        # Per routing type: clusters that the proxy's config routes to, and the in-flight one's.
        self._running: dict[str, frozenset[str]] = {}
        self._sending: dict[str, frozenset[str]] = {}
        self._view: Snapshot | None = None  # what this proxy was last offered, kept clusters included
        # Per type found settled: for which version object and revision, and whether the proxy
        # asked for all of it. Until the proxy's next request of that type or a new version,
        # a wake-up (the ACK of another type, a change elsewhere) re-checks nothing of it.
        self._noted: dict[str, tuple[TypeSnapshot, int, bool]] = {}

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
    def held(self, type_url: str) -> frozenset[str] | None:
        """The names of `type_url` the proxy has once it applies what it was last sent (None: all)."""

    def answered(self, type_url: str, error: str | None) -> bool:
        """Record an ACK or NACK; returns whether it was a NACK."""
        if error:
            log.warning("proxy %s rejected %s: %s", self.proxy.node_id, type_url, error)
        self._fleet.answered(self.proxy, type_url, error)
        sending = self._sending.pop(type_url, None)
        if sending is not None:
            # After a NACK the proxy may run the old config, or (delta) part of the new one.
            self._running[type_url] = self._running.get(type_url, frozenset()) | sending if error else sending
        return bool(error)

    def _offer(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot plus the removed clusters this proxy's routes still use."""
        view = snapshot
        if self._view is not None and CLUSTER in snapshot.types:
            used = frozenset().union(*self._running.values(), *self._sending.values())
            if kept := used - snapshot.types[CLUSTER].resources.keys():
                view = snapshot.keeping(kept, self._view)
        self._view = view
        return view

    def response(self, snapshot: Snapshot) -> bytes | None:
        """The next response this proxy should get, if any (one at a time, in PUSH_ORDER)."""
        view = self._offer(snapshot)
        clusters_in_flight = False
        for type_url in PUSH_ORDER:
            if type_url not in view.types:
                continue
            if clusters_in_flight and type_url != ENDPOINT:
                return None
            state = self.settled(type_url, view)
            if state is Settled.NOT_SUBSCRIBED:
                if type_url in DEPENDENT and view.types[type_url].resources:
                    # The proxy asks for these once it has the clusters or listeners naming
                    # them; until then it has not converged, and nothing after them is sent.
                    self._fleet.expects(self.proxy, type_url)
                    return None
                continue
            if state in (Settled.YES, Settled.REJECTED):
                current = view.types[type_url]
                noted = self._noted.get(type_url)
                if noted is None or noted[0] is not current or noted[1] != view.revision:
                    if state is Settled.YES:
                        self._fleet.has(self.proxy, type_url, current.version, view.revision)
                        if type_url in ROUTING:
                            self._running[type_url] = current.used(self.held(type_url))
                    noted = self._noted[type_url] = (current, view.revision, self._complete(type_url, view))
                if noted[2]:
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
            if type_url in ROUTING:
                self._sending[type_url] = view.types[type_url].used(self.held(type_url))
            self._fleet.sent(self.proxy, type_url, view.version(type_url), view.revision, len(response))
            return response
        return None

    def _complete(self, type_url: str, snapshot: Snapshot) -> bool:
        names = self.requested(type_url)
        if type_url not in (ENDPOINT, ROUTE) or names is None:
            return True
        return snapshot.types[type_url].names <= names

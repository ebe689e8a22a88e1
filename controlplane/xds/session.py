"""What one ADS stream owes its proxy, whichever protocol variant it speaks.

Types go in PUSH_ORDER, one response at a time, and a type waits until the ones before it
are settled (answered at the current version, every EDS/RDS resource requested), so a route
never reaches a proxy before the clusters and endpoints it needs.
"""

from __future__ import annotations

import enum
import itertools
import logging
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from controlplane.cache import Snapshot
from controlplane.translate.types import ENDPOINT, PUSH_ORDER, ROUTE
from controlplane.xds.status import Fleet, ProxyStatus

log = logging.getLogger(__name__)

Request = TypeVar("Request")


class Settled(enum.Enum):
    NOT_SUBSCRIBED = "not subscribed"
    YES = "settled"
    REJECTED = "the proxy refused this version; it is not sent again"
    IN_FLIGHT = "waiting for the proxy's answer"
    NEEDS_PUSH = "needs a push"


class Session(ABC, Generic[Request]):
    def __init__(self, proxy: ProxyStatus, fleet: Fleet, nonces: itertools.count[int]) -> None:
        self.proxy = proxy
        self._fleet = fleet
        self._nonces = nonces

    @abstractmethod
    def receive(self, request: Request) -> None: ...

    @abstractmethod
    def settled(self, type_url: str, snapshot: Snapshot) -> Settled: ...

    @abstractmethod
    def requested(self, type_url: str) -> frozenset[str] | None:
        """Names the proxy subscribed to, None for a wildcard subscription."""

    @abstractmethod
    def push(self, type_url: str, snapshot: Snapshot) -> bytes:
        """Record what is sent and return the encoded response."""

    def next_nonce(self) -> str:
        return str(next(self._nonces))

    def answered(self, type_url: str, error: str | None) -> bool:
        """Record an ACK or NACK; returns whether it was a NACK."""
        if error:
            log.warning("proxy %s rejected %s: %s", self.proxy.node_id, type_url, error)
        self._fleet.answered(self.proxy, type_url, error)
        return bool(error)

    def responses(self, snapshot: Snapshot) -> list[bytes]:
        for type_url in PUSH_ORDER:
            if type_url not in snapshot.types:
                continue
            state = self.settled(type_url, snapshot)
            if state is Settled.NOT_SUBSCRIBED:
                continue
            if state in (Settled.YES, Settled.REJECTED):
                if state is Settled.YES:
                    self._fleet.has(self.proxy, type_url, snapshot.version(type_url), snapshot.revision)
                if self._complete(type_url, snapshot):
                    continue
                return []  # the proxy has yet to ask for resources the next types depend on
            if state is Settled.IN_FLIGHT:
                return []
            response = self.push(type_url, snapshot)
            self._fleet.sent(self.proxy, type_url, snapshot.version(type_url), snapshot.revision)
            return [response]
        return []

    def _complete(self, type_url: str, snapshot: Snapshot) -> bool:
        names = self.requested(type_url)
        if type_url not in (ENDPOINT, ROUTE) or names is None:
            return True
        return set(snapshot.types[type_url].resources) <= names

"""The ADS service: state-of-the-world and delta streams, served by `transport.GrpcServer`.

The server only moves bytes: what a proxy should have comes from the snapshot cache, what it
has been sent and what it answered is tracked by its session.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import AsyncGenerator
from typing import Any

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from controlplane.cache import ConfigWatcher
from controlplane.groups import ProxyGroup
from controlplane.xds.delta import DeltaSession
from controlplane.xds.fleet import Fleet
from controlplane.xds.session import Session
from controlplane.xds.sotw import SotwSession
from controlplane.xds.status import ProxyStatus
from controlplane.xds.transport import INVALID_ARGUMENT, Method, Requests, Status

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def group_of(node: Node, default: ProxyGroup) -> ProxyGroup:
    """The bootstrap says, in node metadata, where the proxy's listener goes and, for a
    sidecar, where its local backend listens and where it takes outbound calls.
    ValueError when a sidecar does not say where its backend is."""
    fields = node.metadata.fields
    address = fields["listen_address"].string_value if "listen_address" in fields else default.listen_address
    port = int(fields["listen_port"].number_value) if "listen_port" in fields else default.listen_port
    backend = (fields["backend_address"].string_value, int(fields["backend_port"].number_value)) if (
        "backend_address" in fields and "backend_port" in fields) else None
    outbound = int(fields["outbound_port"].number_value) if "outbound_port" in fields else 0
    return ProxyGroup(role=node.cluster or default.role, listen_address=address, listen_port=port,
                      local_backend=backend, outbound_port=outbound or None)


class Wake:
    """asyncio.Event's set, wait and clear for the one task that waits: without the Event's
    deque of waiters, a few hundred bytes less on each of thousands of streams."""

    __slots__ = ("_loop", "_set", "_waiter")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()  # not looked up on every wait: that is a getpid() call
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        if not self._set:
            self._set = True
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        assert self._waiter is None, "one waiter"
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class AdsServer:
    def __init__(self, cache: ConfigWatcher, fleet: Fleet, default_group: ProxyGroup) -> None:
        self._cache = cache
        self._fleet = fleet
        self._default_group = default_group
        self._stream_ids = itertools.count(1)

    def methods(self) -> dict[str, Method]:
        """The service's two methods, by path; responses come encoded from the cache."""
        return {
            f"/{ADS_SERVICE}/StreamAggregatedResources": Method(
                functools.partial(self._serve, kind=SotwSession, protocol="sotw"), DiscoveryRequest.FromString),
            f"/{ADS_SERVICE}/DeltaAggregatedResources": Method(
                functools.partial(self._serve, kind=DeltaSession, protocol="delta"), DeltaDiscoveryRequest.FromString),
        }

    async def _serve(self, requests: Requests, kind: type[Session[Any]], protocol: str) -> AsyncGenerator[bytes, None]:
        first = await anext(requests, None)
        if first is None:
            return
        try:
            group = group_of(first.node, self._default_group)
        except ValueError as exc:
            log.error("proxy %s (%s) refused: %s", first.node.id, first.node.cluster, exc)
            raise Status(INVALID_ARGUMENT, str(exc)) from None
        metadata = first.node.metadata.fields
        proxy = ProxyStatus(first.node.id, first.node.cluster, group.key, next(self._stream_ids), protocol,
                            metadata["admin_address"].string_value if "admin_address" in metadata else None)
        session = kind(proxy, self._fleet)
        self._fleet.connect(proxy)
        log.info("proxy %s (%s, %s) connected, group %s", proxy.node_id, proxy.cluster, protocol, group.key)
        session.receive(first)
        # One event wakes the sender: the snapshot changed, a request left a response owed, or
        # the requests ended.
        wake = Wake()
        outbox: list[bytes] = []
        with self._cache.watching(group, proxy.node_id, wake) as snapshot:

            def owe() -> None:
                """Queue what the proxy is owed now: usually one response, or none."""
                while (latest := snapshot()) is not None and (response := session.response(latest)) is not None:
                    outbox.append(response)
                    if not session.more:
                        break

            def take(request: Any) -> None:
                # An ACK is answered as it is decoded: most owe nothing more, and then the
                # sender sleeps on.
                session.receive(request)
                owe()
                if outbox:
                    wake.set()

            requests.listen(take, wake.set)
            wake.set()  # the snapshot there is now, if any
            try:
                while True:
                    await wake.wait()
                    wake.clear()
                    if (ended := requests.ended) is not None:
                        if isinstance(ended, StopAsyncIteration):
                            return  # the proxy closed its side
                        raise ended
                    owe()
                    while outbox:
                        yield outbox.pop(0)
            finally:
                self._fleet.disconnect(proxy)
                log.info("proxy %s disconnected", proxy.node_id)

"""The ADS server (state of the world): how snapshots stream to proxies.

Per stream and type, a response is sent only when the proxy has answered the previous one
(ACK or NACK) and the snapshot differs from what was last sent, so a NACK never causes a
re-send loop. Types go in PUSH_ORDER, and a type waits until the ones before it are settled
(answered at the current version, and every EDS/RDS resource requested), so a route never
reaches a proxy before the clusters and endpoints it needs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from controlplane.cache import Snapshot, SnapshotCache
from controlplane.cache.publisher import Publisher
from controlplane.cache.snapshot import with_nonce
from controlplane.translate import ProxyGroup
from controlplane.translate.types import ENDPOINT, PUSH_ORDER, ROUTE
from controlplane.xds.status import Fleet, ProxyStatus

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


@dataclass
class _Subscription:
    names: frozenset[str] | None = None  # None: every resource of the type
    waiting: bool = True  # the proxy answered our last response (or never had one)
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    nonce: str = ""


@dataclass
class _Stream:
    proxy: ProxyStatus
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def group_of(node: Node, default: ProxyGroup) -> ProxyGroup:
    """The bootstrap says where its edge listener goes, in node metadata."""
    fields = node.metadata.fields
    address = fields["listen_address"].string_value if "listen_address" in fields else default.listen_address
    port = int(fields["listen_port"].number_value) if "listen_port" in fields else default.listen_port
    return ProxyGroup(role=node.cluster or default.role, listen_address=address, listen_port=port)


class AdsServer:
    def __init__(self, cache: SnapshotCache, publisher: Publisher, fleet: Fleet, default_group: ProxyGroup) -> None:
        self._cache = cache
        self._publisher = publisher
        self._fleet = fleet
        self._default_group = default_group
        self._stream_ids = itertools.count(1)
        self._nonces = itertools.count(1)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    request_deserializer=DiscoveryRequest.FromString,
                    response_serializer=lambda encoded: encoded,  # responses are encoded by the cache
                ),
            },
        )

    async def _stream(
        self, requests: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        first = await anext(requests, None)
        if first is None:
            return
        group = group_of(first.node, self._default_group)
        proxy = ProxyStatus(first.node.id, first.node.cluster, group.key, next(self._stream_ids))
        stream = _Stream(proxy)
        self._publisher.join(group)
        self._fleet.connect(proxy)
        log.info("proxy %s (%s) connected, group %s", proxy.node_id, proxy.cluster, group.key)
        self._receive(stream, first)
        reader = asyncio.create_task(self._read(stream, requests))
        snapshots = self._cache.watch(group.key)
        snapshot_task: asyncio.Task[Snapshot] = asyncio.ensure_future(anext(snapshots))
        snapshot: Snapshot | None = None
        try:
            while True:
                wake_task = asyncio.ensure_future(stream.wake.wait())
                await asyncio.wait({wake_task, snapshot_task, reader}, return_when=asyncio.FIRST_COMPLETED)
                wake_task.cancel()
                if reader.done():
                    reader.result()  # raises what ended the stream, if anything
                    return
                if snapshot_task.done():
                    snapshot = snapshot_task.result()
                    snapshot_task = asyncio.ensure_future(anext(snapshots))
                stream.wake.clear()
                if snapshot is not None:
                    for response in self._responses(stream, snapshot):
                        yield response
        finally:
            reader.cancel()
            snapshot_task.cancel()
            self._fleet.disconnect(proxy)
            log.info("proxy %s disconnected", proxy.node_id)

    async def _read(self, stream: _Stream, requests: AsyncIterator[DiscoveryRequest]) -> None:
        async for request in requests:
            self._receive(stream, request)
            stream.wake.set()

    def _receive(self, stream: _Stream, request: DiscoveryRequest) -> None:
        sub = stream.subscriptions.get(request.type_url)
        if sub is None:
            # A proxy reconnecting says which version it already runs: nothing is re-sent for it.
            sub = stream.subscriptions[request.type_url] = _Subscription(sent_version=request.version_info or None)
            if request.version_info:
                stream.proxy.of(request.type_url).acked = request.version_info
        elif request.response_nonce != sub.nonce:
            return  # answers a response that a newer one has replaced
        elif request.response_nonce:
            error = request.error_detail.message if request.HasField("error_detail") else None
            if error:
                log.warning("proxy %s rejected %s version %s: %s",
                            stream.proxy.node_id, request.type_url, sub.sent_version, error)
            self._fleet.answered(stream.proxy, request.type_url, error)
        sub.names = frozenset(request.resource_names) if request.resource_names else None
        sub.waiting = True

    def _responses(self, stream: _Stream, snapshot: Snapshot) -> list[bytes]:
        out: list[bytes] = []
        for type_url in PUSH_ORDER:
            sub = stream.subscriptions.get(type_url)
            if sub is None or type_url not in snapshot.types:
                continue
            current = snapshot.types[type_url]
            if sub.sent_version == current.version and sub.sent_names == sub.names:
                self._fleet.unchanged(stream.proxy, type_url, current.version, snapshot.revision)
                if sub.waiting and self._complete(sub, snapshot, type_url):
                    continue
                break
            if not sub.waiting:
                break  # make-before-break: later types wait for this one's answer
            nonce = str(next(self._nonces))
            out.append(with_nonce(current.body(sub.names), nonce))
            sub.sent_version, sub.sent_names, sub.nonce, sub.waiting = current.version, sub.names, nonce, False
            self._fleet.sent(stream.proxy, type_url, current.version, snapshot.revision)
            break
        return out

    @staticmethod
    def _complete(sub: _Subscription, snapshot: Snapshot, type_url: str) -> bool:
        """The proxy asked for every endpoint set and route table the snapshot has."""
        if type_url not in (ENDPOINT, ROUTE) or sub.names is None:
            return True
        return set(snapshot.types[type_url].resources) <= sub.names

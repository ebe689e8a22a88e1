"""A raw ADS client on a real grpc.aio stream, for tests and bench/xds_scale.py.

Driven by hand (`send`, `recv`, `quiet`) it says exactly what a test wants, ACKs included; or
`follow()` makes it behave like Envoy: subscribe to clusters and listeners, then to the
endpoints and route configurations they name, and ACK every response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.scoped_route_pb2 import ScopedRouteConfiguration
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)

from controlplane.cache.references import managers
from controlplane.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
Response = DiscoveryResponse | DeltaDiscoveryResponse


class AdsClient:
    def __init__(self, target: str, node_id: str, *, protocol: str = "sotw", cluster: str = "edge",
                 metadata: dict[str, Any] | None = None, reading: bool = True) -> None:
        """`reading=False` makes a hung proxy: its stream is never read."""
        self._setup(node_id, protocol, cluster, metadata)
        # Its own connection, as each Envoy has (grpc otherwise shares one among channels).
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        self.call = self.channel.stream_stream(
            ADS + self.method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self.response_type.FromString,
        )()
        # One reader for the stream's life: cancelling a grpc.aio read would cancel the call.
        self._reader = asyncio.create_task(self._read() if reading else asyncio.sleep(0))

    def _setup(self, node_id: str, protocol: str, cluster: str, metadata: dict[str, Any] | None) -> None:
        self.protocol = protocol
        self.node = Node(id=node_id, cluster=cluster)
        self.node.metadata.update(metadata or {})
        sotw = protocol == "sotw"
        self.method = "StreamAggregatedResources" if sotw else "DeltaAggregatedResources"
        self.response_type: type[Response] = DiscoveryResponse if sotw else DeltaDiscoveryResponse
        self._request = DiscoveryRequest if sotw else DeltaDiscoveryRequest
        self._sent_node = False
        # The reader queues what arrives, or once following, answers it itself: a thousand
        # simulated proxies then cost one task wake-up per response, not three (bench/xds_scale.py).
        self._responses: asyncio.Queue[Response | BaseException] = asyncio.Queue()
        self._handle: Callable[[Response], Awaitable[None]] | None = None

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self._deliver(response)
            self._responses.put_nowait(EOFError("the control plane ended the stream"))
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - whoever reads next raises it
            self._responses.put_nowait(exc)

    async def _deliver(self, response: Response) -> None:
        if self._handle is not None:
            await self._handle(response)
        else:
            self._responses.put_nowait(response)

    async def _write(self, request: Any) -> None:
        await self.call.write(request)

    async def send(self, type_url: str, **fields: Any) -> None:
        request = self._request(type_url=type_url, **fields)
        if not self._sent_node:
            request.node.CopyFrom(self.node)
            self._sent_node = True
        await self._write(request)

    async def recv(self, timeout: float | None = 5.0) -> Response:
        got = await (self._responses.get() if timeout is None else asyncio.wait_for(self._responses.get(), timeout))
        if isinstance(got, BaseException):
            raise got
        return got

    async def quiet(self, seconds: float) -> None:
        """Nothing arrives for `seconds`."""
        try:
            got = await asyncio.wait_for(self._responses.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {got}")

    async def ack(self, response: Response, error: str | None = None, **fields: Any) -> None:
        """ACK (or NACK, with `error`) `response`; SotW ACKs carry the names still wanted in `fields`."""
        extra: dict[str, Any] = {} if error is None else {"error_detail": {"code": 3, "message": error}}
        if isinstance(response, DiscoveryResponse) and error is None:
            extra["version_info"] = response.version_info
        await self.send(response.type_url, response_nonce=response.nonce, **extra, **fields)

    async def follow(self, on_ack: Callable[[str, Response], None] = lambda *_: None) -> None:
        """Behave like Envoy until cancelled: wildcard CDS and LDS, then EDS for every cluster,
        every scope (wildcard SRDS) once a listener has scoped routes, and RDS for every route
        configuration the listeners or scopes name; ACK everything. As Envoy does, a response's
        dependent names are asked for before the response is ACKed."""
        names: dict[str, list[str]] = {ENDPOINT: [], SCOPED_ROUTE: [], ROUTE: []}
        named: dict[tuple[str, str], list[str]] = {}  # (naming type, named type) -> names
        last: dict[str, Response] = {}

        async def handle(response: Response) -> None:
            last[response.type_url] = response
            for dependent in DEPENDS.get(response.type_url, ()):
                named[response.type_url, dependent] = _named(response, dependent)
                now = sorted({n for (_, d), ns in named.items() if d == dependent for n in ns})
                await self._subscribe(dependent, now, names, last.get(dependent))
            wanted = None if response.type_url == SCOPED_ROUTE else names.get(response.type_url)  # wildcard
            await self.ack(response, **({"resource_names": wanted} if wanted is not None and self.protocol == "sotw"
                                        else {}))
            on_ack(response.type_url, response)

        while not self._responses.empty():  # what arrived before following: answered in order
            got = self._responses.get_nowait()
            if isinstance(got, BaseException):
                raise got
            await handle(got)
        self._handle = handle
        wildcard: dict[str, Any] = {} if self.protocol == "sotw" else {"resource_names_subscribe": ["*"]}
        await self.send(CLUSTER, **wildcard)
        await self.send(LISTENER, **wildcard)
        await self.recv(timeout=None)  # raises how the stream ended: nothing else is queued now
        raise AssertionError("a response was queued while following")

    async def _subscribe(self, type_url: str, now: list[str], names: dict[str, list[str]],
                         last: Response | None) -> None:
        if type_url == SCOPED_ROUTE:  # wildcard, once
            if now and not names[type_url]:
                names[type_url] = now
                await self.send(type_url, **({} if self.protocol == "sotw" else {"resource_names_subscribe": ["*"]}))
            return
        if self.protocol == "sotw":
            if now != names[type_url]:
                names[type_url] = now
                answered = {} if not isinstance(last, DiscoveryResponse) else {
                    "response_nonce": last.nonce, "version_info": last.version_info}
                await self.send(type_url, resource_names=now, **answered)
        elif new := sorted(set(now) - set(names[type_url])):
            names[type_url] = sorted(set(names[type_url]) | set(new))
            await self.send(type_url, resource_names_subscribe=new)

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        await self.channel.close()


# What a type's resources name that the proxy then asks for.
DEPENDS = {CLUSTER: (ENDPOINT,), LISTENER: (SCOPED_ROUTE, ROUTE), SCOPED_ROUTE: (ROUTE,)}


def _named(response: Response, dependent: str) -> list[str]:
    """The EDS clusters a CDS response names, the route configurations an LDS or SRDS response
    names, or (SRDS) the scoped routes of an LDS response."""
    if isinstance(response, DiscoveryResponse):
        resources = [r.value for r in response.resources]
    else:
        resources = [r.resource.value for r in response.resources]
    out: set[str] = set()
    for raw in resources:
        if dependent == ENDPOINT:
            cluster = Cluster.FromString(raw)
            if cluster.type == Cluster.EDS:
                out.add(cluster.name)
        elif response.type_url == SCOPED_ROUTE:
            out.add(ScopedRouteConfiguration.FromString(raw).route_configuration_name)
        elif dependent == SCOPED_ROUTE:
            out.update(h.scoped_routes.name for h in managers(Listener.FromString(raw)) if h.HasField("scoped_routes"))
        else:
            out.update(h.rds.route_config_name for h in managers(Listener.FromString(raw)) if h.HasField("rds"))
    return sorted(out)

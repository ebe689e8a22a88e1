"""AdsClient on an HTTP/2 connection of its own, for the simulated fleet of bench/xds_scale.py.

grpc.aio client streams cost the simulated fleet about 0.5 ms of CPU per response (reading it,
ACKing it), on the same two cores as the control plane, so the bench measured its own proxies
as much as the control plane. This client speaks just enough HTTP/2 (RFC 9113) for one gRPC
stream, from one asyncio Protocol: less than half of that. Towards the server it is a proper
peer, and behaves as Envoy does: its own connection, Envoy's flow-control windows, the
server's windows and frame size honoured, SETTINGS and PINGs acknowledged, any end of the
stream (trailers, RST_STREAM, GOAWAY, a closed connection) raised to whoever reads next, as
AdsClient does. Response headers and trailers are not decoded: the client needs nothing in them.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from collections.abc import Callable
from typing import Any, cast

from xds_client import ADS, AdsClient, Response

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM = ACK = 0x1
END_HEADERS, PADDED = 0x4, 0x8
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x2, 0x4, 0x5
STREAM = 1  # the one stream of the connection
DEFAULT_WINDOW, DEFAULT_FRAME = 65_535, 16_384
U31 = 2**31 - 1  # HTTP/2's 31-bit fields: stream ids, window increments
# Envoy's own HTTP/2 defaults (envoy/edge.yaml's xDS cluster sets none): 256 MiB windows,
# announced up front, and no pings of its own. The server's per-connection memory depends on
# them: against grpc.aio clients (64 KiB windows grown by BDP pings) the control plane held
# ~6 KiB more per proxy.
ENVOY_WINDOW = 268_435_456


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def literal(name: str, value: str) -> bytes:
    """An HPACK literal field, not indexed, new name, no Huffman coding (RFC 7541 6.2.2): the
    one request's headers never touch the dynamic table."""
    out = b"\x00"
    for text in (name.encode(), value.encode()):
        assert len(text) < 127, "one-byte length prefix"
        out += bytes((len(text),)) + text
    return out


class _Connection(asyncio.Protocol):
    """One client connection carrying one gRPC stream: frames in, messages out."""

    def __init__(self, on_message: Callable[[bytes], None], on_end: Callable[[BaseException], None]) -> None:
        self._on_message, self._on_end = on_message, on_end
        self._transport: asyncio.Transport | None = None
        self._frames = bytearray()  # received, not yet a whole frame
        self._message = bytearray()  # gRPC message bytes of DATA frames, not yet a whole message
        self._pending = bytearray()  # gRPC message bytes waiting for the server's window
        self._window = DEFAULT_WINDOW  # the connection's send window
        self._stream_window = DEFAULT_WINDOW
        self._initial = DEFAULT_WINDOW  # the server's SETTINGS_INITIAL_WINDOW_SIZE
        self._max_frame = DEFAULT_FRAME
        self._received = 0  # DATA bytes since our windows were last topped up
        self.ended: BaseException | None = None  # why the stream ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass

    def start(self, authority: str, path: str) -> None:
        settings = struct.pack(">HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, ENVOY_WINDOW)
        headers = b"".join(literal(n, v) for n, v in (
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers")))
        assert self._transport is not None
        self._transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                              + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", ENVOY_WINDOW - DEFAULT_WINDOW))
                              + frame(HEADERS, END_HEADERS, STREAM, headers))

    def send(self, message: bytes) -> None:
        self._pending += b"\x00" + struct.pack(">I", len(message)) + message
        self._flush()

    def _flush(self) -> None:
        assert self._transport is not None
        while self._pending and (n := min(self._window, self._stream_window, self._max_frame, len(self._pending))) > 0:
            self._transport.write(frame(DATA, 0, STREAM, bytes(self._pending[:n])))
            del self._pending[:n]
            self._window -= n
            self._stream_window -= n

    def data_received(self, data: bytes) -> None:
        frames = self._frames
        frames += data
        at = 0
        while len(frames) - at >= 9:
            length = int.from_bytes(frames[at:at + 3], "big")
            if len(frames) - at - 9 < length:
                break
            kind, flags = frames[at + 3], frames[at + 4]
            stream = int.from_bytes(frames[at + 5:at + 9], "big") & U31
            payload = bytes(frames[at + 9:at + 9 + length])
            at += 9 + length
            self._frame(kind, flags, stream, payload)
        del frames[:at]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == DATA:
            self._data(flags, payload)
        elif kind == SETTINGS and not flags & ACK:
            self._settings(payload)
        elif kind == PING and not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload, "big") & U31
            if stream == 0:
                self._window += increment
            else:
                self._stream_window += increment
            self._flush()
        elif kind == HEADERS and flags & END_STREAM:
            self._end(EOFError("the control plane ended the stream"))
        elif kind == RST_STREAM:
            self._end(ConnectionError(f"the control plane reset the stream (code {int.from_bytes(payload, 'big')})"))
        elif kind == GOAWAY:
            self._end(ConnectionError("the control plane sent GOAWAY"))

    def _data(self, flags: int, payload: bytes) -> None:
        self._received += len(payload)
        if self._received > ENVOY_WINDOW // 2:  # top both windows up long before they run out
            increment = struct.pack(">I", self._received)
            self._write(frame(WINDOW_UPDATE, 0, 0, increment) + frame(WINDOW_UPDATE, 0, STREAM, increment))
            self._received = 0
        if flags & PADDED:
            payload = payload[1:len(payload) - payload[0]]
        message = self._message
        message += payload
        while len(message) >= 5 and len(message) >= 5 + (size := int.from_bytes(message[1:5], "big")):
            self._on_message(bytes(message[5:5 + size]))
            del message[:5 + size]
        if flags & END_STREAM:
            self._end(EOFError("the control plane ended the stream"))

    def _settings(self, payload: bytes) -> None:
        for (key, value) in struct.iter_unpack(">HI", payload):
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                self._stream_window += value - self._initial
                self._initial = value
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._max_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        self._flush()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _end(self, why: BaseException) -> None:
        if self.ended is None:
            self.ended = why
            self._on_end(why)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or ConnectionError("the control plane closed the connection"))

    def close(self) -> None:
        self.ended = self.ended or ConnectionError("closed by the client")
        if self._transport is not None:
            self._transport.close()


class H2AdsClient(AdsClient):
    """AdsClient (send, recv, ack, follow) over _Connection instead of a grpc.aio channel."""

    def __init__(self, target: str, node_id: str, *, protocol: str = "sotw", cluster: str = "edge",
                 metadata: dict[str, Any] | None = None) -> None:
        self._setup(node_id, protocol, cluster, metadata)
        self._arrived: collections.deque[Response | BaseException] = collections.deque()
        self._woken = asyncio.Event()
        self._connection: _Connection | None = None
        self._connected: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._run(target))

    def _arrive(self, item: Response | BaseException) -> None:
        self._arrived.append(item)
        self._woken.set()

    async def _run(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(lambda data: self._arrive(self.response_type.FromString(data)), self._arrive),
                host, int(port))
        except OSError as exc:
            self._connected.set_exception(exc)
            self._responses.put_nowait(exc)
            return
        connection.start(target, ADS + self.method)
        self._connection = connection
        self._connected.set_result(connection)
        # One wake-up answers every response that arrived meanwhile.
        while True:
            await self._woken.wait()
            self._woken.clear()
            while self._arrived:
                item = self._arrived.popleft()
                if isinstance(item, BaseException):
                    self._responses.put_nowait(item)
                    return
                await self._deliver(item)

    async def _write(self, request: Any) -> None:
        connection = await self._connected
        if connection.ended is not None:
            raise ConnectionError(f"the stream has ended: {connection.ended!r}")
        connection.send(request.SerializeToString())

    async def close(self) -> None:
        self._reader.cancel()
        if self._connection is not None:
            self._connection.close()

"""gRPC bidirectional streams over HTTP/2, served from one asyncio protocol per connection.

Why not grpc.aio: on two cores it spent 0.32-0.40 ms of CPU per message pushed and answered
(completion-queue polling, a future and a task step per read and per write), which, times
thousands of proxies, was most of the control plane's cost of a write. Here the HTTP/2 state
(framing, HPACK, flow control, SETTINGS, PING, GOAWAY) is the `h2` library's, and a message
costs one `send_data` and one write to the socket: a stream's responses are written from the
handler's own task, and its requests are decoded in the protocol's callback.

Only what ADS needs: bidirectional streaming methods, identity encoding (a compressed message
is refused), no deadlines (xDS streams live as long as the proxy does), status codes and
messages in trailers as gRPC specifies (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import struct
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger(__name__)

# gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 0, 3, 8, 12, 13, 14

PREFIX = struct.Struct(">BI")  # a message's compressed flag and length
MAX_MESSAGE = 4 * 1024 * 1024  # a request larger than gRPC's default limit is refused
MAX_QUEUED = 64  # requests a handler has not read yet; a peer that sends more is refused
MAX_STREAMS = 100  # per connection: an Envoy opens one
# What a peer may send before we acknowledge it: requests are small, but a state-of-the-world
# ACK names every resource it subscribes to.
WINDOW = 1024 * 1024
# grpc-message is percent-encoded UTF-8: every byte outside printable ASCII, and '%' itself.
MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != ord("%"))
RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))


class Status(Exception):
    """Ends a stream with this gRPC status: what a handler raises to refuse its peer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


Handler = Callable[["Requests"], AsyncGenerator[bytes, None]]


@dataclass(frozen=True, slots=True)
class Method:
    """A bidirectional streaming method: the handler takes decoded requests and yields encoded
    responses."""

    handler: Handler
    decode: Callable[[bytes], Any]


class Requests:
    """A stream's decoded requests: an async iterator for the handler's task, or, once the handler
    calls `listen`, a callback run as each request is decoded (no task step per request)."""

    __slots__ = ("_loop", "_queue", "_waiter", "_end", "_callback", "_on_end")

    def __init__(self) -> None:
        # Kept: asyncio.get_running_loop() makes a getpid() system call, and a stream waits for
        # each request.
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._end: BaseException | None = None  # StopAsyncIteration once the peer half-closes
        self._callback: Callable[[Any], None] | None = None
        self._on_end: Callable[[], None] | None = None

    def listen(self, callback: Callable[[Any], None], on_end: Callable[[], None]) -> None:
        """From now on hand each request to `callback` as it is decoded, in the connection's
        own callback (so it must not block; what it raises fails the stream with INTERNAL), and
        call `on_end` once when the stream ends (`ended` says how). Queued requests go first."""
        self._callback, self._on_end = callback, on_end
        while self._queue:
            callback(self._queue.popleft())
        if self._end is not None:
            on_end()

    @property
    def ended(self) -> BaseException | None:
        """Why the requests ended: StopAsyncIteration when the peer half-closed; None: not yet."""
        return self._end

    def put(self, request: Any) -> None:
        if self._callback is not None:
            self._callback(request)
            return
        self._queue.append(request)
        self._wake()

    def end(self, why: BaseException) -> None:
        if self._end is None:
            self._end = why
            self._wake()
            if self._on_end is not None:
                self._on_end()

    def __len__(self) -> int:
        return len(self._queue)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> Requests:
        return self

    async def __anext__(self) -> Any:
        while not self._queue:
            if self._end is not None:
                raise self._end
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()


class _Stream:
    __slots__ = ("id", "method", "requests", "task", "buffer", "headers_sent", "closed", "window")

    def __init__(self, stream_id: int, method: Method | None) -> None:
        self.id = stream_id
        self.method = method  # None: an unknown method, refused as it arrives
        self.requests = Requests()
        self.task: asyncio.Task[None] | None = None
        self.buffer = bytearray()  # DATA received, not yet a whole message
        self.headers_sent = False
        self.closed = False  # trailers sent or the stream reset: nothing more goes out
        self.window: asyncio.Future[None] | None = None  # a send waiting for flow-control credit


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._writable: asyncio.Future[None] | None = None  # set while the socket's buffer is full

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a proxy that vanished without closing is found out by the kernel
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._server.connections.add(self)
        self._h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 * 1024,
        })
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(WINDOW - 65_535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            if not self._closing():
                log.warning("xDS connection from %s: HTTP/2 protocol error: %s", self._peer(), exc)
            self._close()
            return
        for event in events:
            handle = _DISPATCH.get(type(event))
            if handle is not None:
                handle(self, event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        for stream in list(self._streams.values()):
            self._drop(stream, ConnectionResetError("the connection closed"))
        self.resume_writing()  # a send waiting on the socket finds its stream closed

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()
        # A peer that does not read is not read either: what it sends may need answers (PING
        # and SETTINGS acknowledgements, responses), which would pile up here unbounded.
        if not self._closing():
            self._transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self._closing():
            self._transport.resume_reading()  # type: ignore[union-attr]

    # --- HTTP/2 events ---

    def _request(self, event: h2.events.RequestReceived) -> None:
        headers = dict(event.headers)
        path = headers.get(b":path", b"").decode("ascii", "replace")
        method = self._server.methods.get(path)
        stream = _Stream(event.stream_id, method)
        self._streams[event.stream_id] = stream
        if method is None:
            self._trailers(stream, UNIMPLEMENTED, f"unknown method {path}")
            return
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self._trailers(stream, INTERNAL, "content-type must be application/grpc")
            return
        if headers.get(b"grpc-encoding", b"identity") != b"identity":
            self._trailers(stream, UNIMPLEMENTED, "compressed messages are not accepted")
            return
        stream.task = asyncio.get_running_loop().create_task(self._serve(stream))

    def _data(self, event: h2.events.DataReceived) -> None:
        self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.closed or stream.method is None:
            return
        buffer = stream.buffer
        buffer += event.data
        while len(buffer) >= PREFIX.size:
            compressed, length = PREFIX.unpack_from(buffer)
            if compressed or length > MAX_MESSAGE or len(stream.requests) >= MAX_QUEUED:
                self._fail(stream, UNIMPLEMENTED if compressed else RESOURCE_EXHAUSTED,
                           "compressed messages are not accepted" if compressed
                           else f"request of {length} bytes, over {MAX_MESSAGE}" if length > MAX_MESSAGE
                           else f"over {MAX_QUEUED} requests not yet read")
                return
            end = PREFIX.size + length
            if len(buffer) < end:
                return
            try:
                request = stream.method.decode(bytes(buffer[PREFIX.size:end]))
            except Exception as exc:  # noqa: BLE001 - whatever the decoder raises is the peer's fault
                self._fail(stream, INTERNAL, f"could not decode the request: {exc}")
                return
            del buffer[:end]
            try:
                stream.requests.put(request)
            except Exception:
                log.exception("xDS stream %d from %s failed", stream.id, self._peer())
                self._fail(stream, INTERNAL, "internal error")
                return

    def _half_closed(self, event: h2.events.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.requests.end(StopAsyncIteration())

    def _reset(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            self._drop(stream, ConnectionResetError(f"the peer reset the stream (error {event.error_code})"))

    def _credit(self, _event: object) -> None:
        for stream in self._streams.values():
            if stream.window is not None and not stream.window.done():
                stream.window.set_result(None)

    def _terminated(self, event: h2.events.ConnectionTerminated) -> None:
        # After the peer's GOAWAY, h2 sends nothing more on the connection, not even to the
        # streams the peer would still finish: they end here, and the peer reconnects.
        for stream in list(self._streams.values()):
            self._drop(stream, ConnectionResetError(f"the peer sent GOAWAY (error {event.error_code})"))
        self._close()

    # --- streams ---

    async def _serve(self, stream: _Stream) -> None:
        assert stream.method is not None
        try:
            # Closed however the stream ends, so the handler's own cleanup runs now, not when the
            # generator is collected.
            async with contextlib.aclosing(stream.method.handler(stream.requests)) as responses:
                async for response in responses:
                    await self._send(stream, response)
        except Status as exc:
            self._trailers(stream, exc.code, exc.message)
        except (ConnectionResetError, asyncio.CancelledError):
            return  # the peer went away or the server stops: nobody to tell
        except Exception:
            log.exception("xDS stream %d from %s failed", stream.id, self._peer())
            self._trailers(stream, INTERNAL, "internal error")
        else:
            self._trailers(stream, OK, "")
        finally:
            if self._streams.get(stream.id) is stream and stream.closed:
                del self._streams[stream.id]

    async def _send(self, stream: _Stream, message: bytes) -> None:
        # Frames are views into one buffer: slicing bytes would copy the rest of a large message
        # once per frame.
        data = memoryview(PREFIX.pack(0, len(message)) + message)
        while data:
            if stream.closed:
                raise ConnectionResetError("the stream ended")
            if self._writable is not None and not self._writable.done():
                await self._writable
                continue
            size = min(len(data), self._h2.local_flow_control_window(stream.id), self._h2.max_outbound_frame_size)
            if size <= 0:
                stream.window = asyncio.get_running_loop().create_future()
                await stream.window
                continue
            try:
                if not stream.headers_sent:
                    self._h2.send_headers(stream.id, RESPONSE_HEADERS)
                    stream.headers_sent = True
                self._h2.send_data(stream.id, data[:size])
                data = data[size:]
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
                raise ConnectionResetError(f"the stream ended: {exc}") from None
            self._flush()

    def _trailers(self, stream: _Stream, code: int, message: str) -> None:
        """End the stream with a status: in trailers, or alone in the headers (trailers-only)."""
        if stream.closed or self._closing():
            stream.closed = True
            return
        stream.closed = True
        trailers = [(b"grpc-status", str(code).encode())]
        if message:
            trailers.append((b"grpc-message", urllib.parse.quote(message, safe=MESSAGE_SAFE).encode()))
        if not stream.headers_sent:
            trailers = [*RESPONSE_HEADERS, *trailers]
        try:
            self._h2.send_headers(stream.id, trailers, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # the peer reset the stream, or the connection is closing
        self._flush()
        if stream.task is None or stream.task.done():
            self._streams.pop(stream.id, None)

    def _fail(self, stream: _Stream, code: int, message: str) -> None:
        log.warning("xDS stream %d from %s refused: %s", stream.id, self._peer(), message)
        self._trailers(stream, code, message)
        self._drop(stream, ConnectionResetError(message))

    def _drop(self, stream: _Stream, why: BaseException) -> None:
        """The stream is over: its handler stops at its next await."""
        stream.closed = True
        self._streams.pop(stream.id, None)
        stream.requests.end(why)
        if stream.window is not None and not stream.window.done():
            stream.window.set_result(None)  # the send waiting for credit finds the stream closed
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()

    # --- the connection ---

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._closing():
            self._transport.write(data)  # type: ignore[union-attr]

    def _closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _peer(self) -> str:
        peer = None if self._transport is None else self._transport.get_extra_info("peername")
        return "?" if not peer else f"{peer[0]}:{peer[1]}"

    def shut(self) -> None:
        """End every stream with UNAVAILABLE, send GOAWAY and close: the peer reconnects elsewhere."""
        for stream in list(self._streams.values()):
            self._trailers(stream, UNAVAILABLE, "the control plane is stopping")
            self._drop(stream, ConnectionResetError("the server stopped"))
        self._h2.close_connection()
        self._flush()
        self._close()


_DISPATCH: dict[type, Callable[[_Connection, Any], None]] = {
    h2.events.RequestReceived: _Connection._request, h2.events.DataReceived: _Connection._data,
    h2.events.StreamEnded: _Connection._half_closed, h2.events.StreamReset: _Connection._reset,
    h2.events.WindowUpdated: _Connection._credit, h2.events.RemoteSettingsChanged: _Connection._credit,
    h2.events.ConnectionTerminated: _Connection._terminated,
}


class GrpcServer:
    """Serves `methods` (by path, "/package.Service/Method") on one TCP port, in plaintext or TLS."""

    def __init__(self, methods: Mapping[str, Method]) -> None:
        self.methods = dict(methods)
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen; returns the port (useful when `port` is 0)."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), host, port, ssl=ssl_context, backlog=4096)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and end every stream (xDS streams never end on their own, so there is
        nothing to wait for): proxies reconnect to another replica, or to this one restarted."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.shut()
        await self._server.wait_closed()
        self._server = None

"""The ADS server's gRPC transport (controlplane/xds/transport.py) against grpc.aio's own client,
the C core's HTTP/2 and gRPC: messages both ways, flow control with a client's small windows,
statuses a handler raises, malformed and unknown requests, cancellation and stopping."""

from __future__ import annotations

import asyncio
import struct
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from controlplane.xds.transport import INVALID_ARGUMENT, GrpcServer, Method, Requests, Status

ended: list[str] = []  # handlers that ran their cleanup, by first request


def decode(data: bytes) -> bytes:
    if data.startswith(b"bad"):
        raise ValueError("not a request")
    return data


async def echo(requests: Requests) -> AsyncIterator[bytes]:
    """Answers each request with itself, or as the request says: `big N` sends N bytes,
    `refuse` ends the stream with INVALID_ARGUMENT, `crash` raises, `stall` stops reading."""
    first = None
    try:
        async for request in requests:
            first = first or request
            if request == b"refuse":
                raise Status(INVALID_ARGUMENT, "refused: 100% on purpose, naïvely")
            if request == b"crash":
                raise RuntimeError("a secret stack trace")
            if request == b"stall":
                await asyncio.sleep(3600)  # reads nothing more
            if request.startswith(b"big "):
                size = int(request.split()[1])
                yield bytes(i % 251 for i in range(size))
            else:
                yield request
    finally:
        ended.append((first or b"").decode())


async def listening(requests: Requests) -> AsyncIterator[bytes]:
    """Echo again, taking requests by callback after the first (as the ADS server does)."""
    got = [await anext(requests)]
    wake = asyncio.Event()

    def take(request: bytes) -> None:
        if request == b"crash":
            raise RuntimeError("a secret stack trace")
        got.append(request)
        wake.set()

    requests.listen(take, wake.set)
    while True:
        while got:
            yield got.pop(0)
        if requests.ended is not None:
            return
        await wake.wait()
        wake.clear()


PATH, LISTEN = "/test.Echo/Chat", "/test.Echo/Listen"


async def raw_call(port: int, path: str, requests: list[bytes]) -> tuple[int, str, list[bytes]]:
    """One call from an `h2` client that writes every request without waiting and reads until
    the trailers: the status as the server sent it, its message, and the responses. (grpc.aio's
    client reports a write that races the server's status as INTERNAL, whoever the server.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
                          ("content-type", "application/grpc"), ("te", "trailers")])
    pending = b"".join(struct.pack(">BI", 0, len(r)) + r for r in requests)
    responses, data, status = [], b"", None
    try:
        while status is None:
            while pending and conn.local_flow_control_window(1) > 0:
                size = min(len(pending), conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                conn.send_data(1, pending[:size])
                pending = pending[size:]
            writer.write(conn.data_to_send())
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, "the server closed the connection before the trailers"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                    data += event.data
                elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers = dict(event.headers)
                    if "grpc-status" in headers:
                        status = (int(headers["grpc-status"]), urllib.parse.unquote(headers.get("grpc-message", "")))
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset ({event.error_code})")
    finally:
        writer.close()
    while data:
        length = struct.unpack(">I", data[1:5])[0]
        responses.append(data[5:5 + length])
        data = data[5 + length:]
    return status[0], status[1], responses


async def send(call: Any, request: bytes) -> None:
    """Write, whether or not the server has ended the stream already (the status tells)."""
    if call.done():
        return
    try:
        await call.write(request)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass


@pytest.fixture
async def server() -> AsyncIterator[tuple[GrpcServer, int]]:
    server = GrpcServer({PATH: Method(echo, decode), LISTEN: Method(listening, decode)})
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop()


def channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def chat(ch: grpc.aio.Channel, path: str = PATH) -> Any:
    return ch.stream_stream(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)()


async def test_requests_and_responses_go_both_ways_on_many_streams(server: tuple[GrpcServer, int]) -> None:
    async with channel(server[1]) as ch:
        calls = [chat(ch) for _ in range(20)]
        for i, call in enumerate(calls):
            for j in range(3):
                await call.write(f"stream {i} message {j}".encode())
                assert await call.read() == f"stream {i} message {j}".encode()
        for call in calls:
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK


async def test_a_handler_may_take_requests_by_callback(server: tuple[GrpcServer, int]) -> None:
    async with channel(server[1]) as ch:
        call = chat(ch, LISTEN)
        for request in (b"first, by iterator", b"second, by callback", b"third"):
            await call.write(request)
            assert await call.read() == request
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        call = chat(ch, LISTEN)
        await call.write(b"first")
        assert await call.read() == b"first"
        await send(call, b"crash")  # raised in the callback: the stream fails, the server goes on
        assert await call.code() == grpc.StatusCode.INTERNAL
        assert await call.details() == "internal error"


async def test_a_response_larger_than_the_clients_window_arrives_whole(server: tuple[GrpcServer, int]) -> None:
    # grpc.aio's client starts with 64 KiB windows and 16 KiB frames: 3 MB waits for credit many times.
    size = 3_000_000
    async with channel(server[1]) as ch:
        call = chat(ch)
        await call.write(f"big {size}".encode())
        data = await call.read()
        assert len(data) == size and data == bytes(i % 251 for i in range(size))
        await call.write(b"after")
        assert await call.read() == b"after"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_requests_beyond_the_servers_window_flow(server: tuple[GrpcServer, int]) -> None:
    # 12 MB of requests, 12 times the 1 MiB window the server announces: it must top it up.
    async with channel(server[1]) as ch:
        call = chat(ch)
        for i in range(120):
            request = bytes([i]) * 100_000
            await call.write(request)
            assert await call.read() == request
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_a_peer_sending_to_a_handler_that_does_not_read_is_refused(server: tuple[GrpcServer, int]) -> None:
    # Memory per stream is bounded: requests queue for the handler up to a limit.
    code, message, _ = await raw_call(server[1], PATH, [b"stall", *[b"more"] * 100])
    assert (code, message) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "over 64 requests not yet read")


async def test_a_peer_that_does_not_read_is_not_read_either(server: tuple[GrpcServer, int]) -> None:
    # Each PING needs an answer; a peer that sends them and reads nothing must not make the
    # server buffer the answers without bound.
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"  # PING, 8 bytes, stream 0
    sent = 0
    try:
        while sent < 200 * 1024 * 1024:
            writer.write(ping * 4096)
            sent += len(ping) * 4096
            try:
                await asyncio.wait_for(writer.drain(), 1.0)
            except TimeoutError:
                break  # the server stopped reading: the sockets between us are full
        (connection,) = server[0].connections
        buffered = connection._transport.get_write_buffer_size()  # type: ignore[union-attr]
        assert sent < 200 * 1024 * 1024, "the server read everything a peer that never reads sent"
        assert buffered < 1024 * 1024, f"{buffered} bytes of answers buffered for a peer that never reads"
    finally:
        writer.transport.abort()


async def test_a_handlers_status_reaches_the_client_and_a_crash_does_not_leak(server: tuple[GrpcServer, int]) -> None:
    async with channel(server[1]) as ch:
        call = chat(ch)
        await send(call, b"refuse")
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await call.details() == "refused: 100% on purpose, naïvely"
        call = chat(ch)
        await send(call, b"crash")
        assert await call.code() == grpc.StatusCode.INTERNAL
        assert await call.details() == "internal error"


async def test_unknown_methods_and_undecodable_requests_get_a_status(server: tuple[GrpcServer, int]) -> None:
    async with channel(server[1]) as ch:
        # Refused on its headers alone: grpc.aio's client reports a write racing that status
        # as INTERNAL, whoever the server, so this call writes nothing.
        call = chat(ch, "/test.Echo/Nothing")
        assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "/test.Echo/Nothing" in (await call.details() or "")
        call = chat(ch)
        await send(call, b"bad request")
        assert await call.code() == grpc.StatusCode.INTERNAL
        assert "could not decode the request: not a request" in (await call.details() or "")
        # The connection serves on.
        call = chat(ch)
        await call.write(b"still here")
        assert await call.read() == b"still here"
        call.cancel()


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out: {what}")


async def test_a_cancelled_stream_ends_its_handler(server: tuple[GrpcServer, int]) -> None:
    async with channel(server[1]) as ch:
        call = chat(ch)
        await call.write(b"cancel me")
        assert await call.read() == b"cancel me"
        call.cancel()
        await wait_for(lambda: "cancel me" in ended, "the handler's cleanup after the client cancelled")
    async with channel(server[1]) as ch:
        call = chat(ch)
        await call.write(b"closed under me")
        assert await call.read() == b"closed under me"
    await wait_for(lambda: "closed under me" in ended, "the handler's cleanup after the connection closed")


async def test_a_peers_goaway_ends_its_streams_quietly(server: tuple[GrpcServer, int],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server[1])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", PATH), (":authority", "test"),
                          ("content-type", "application/grpc")])
    conn.send_data(1, struct.pack(">BI", 0, 6) + b"goaway")
    writer.write(conn.data_to_send())
    await wait_for(lambda: any(c._streams for c in server[0].connections), "the stream served")
    conn.close_connection()  # GOAWAY, no error, the stream's id within it
    writer.write(conn.data_to_send())
    await wait_for(lambda: "goaway" in ended, "the handler's cleanup after the peer's GOAWAY")
    await asyncio.wait_for(reader.read(), 10)  # returns at EOF: the server closed the connection
    writer.close()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], "a peer's GOAWAY is no error"


async def test_stopping_ends_open_streams_with_unavailable() -> None:
    server = GrpcServer({PATH: Method(echo, decode)})
    port = await server.start("127.0.0.1", 0)
    async with channel(port) as ch:
        call = chat(ch)
        await call.write(b"long lived")
        assert await call.read() == b"long lived"
        await server.stop()
        assert await call.code() == grpc.StatusCode.UNAVAILABLE
        await wait_for(lambda: "long lived" in ended, "the handler's cleanup once the server stopped")
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_an_oversized_request_is_refused_before_it_is_buffered(server: tuple[GrpcServer, int]) -> None:
    code, message, _ = await raw_call(server[1], PATH, [b"x" * (5 * 1024 * 1024)])
    assert (code, message) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "request of 5242880 bytes, over 4194304")


async def test_an_unknown_method_is_unimplemented_even_while_the_client_writes(server: tuple[GrpcServer, int]) -> None:
    code, message, _ = await raw_call(server[1], "/test.Echo/Nothing", [b"x"] * 10)
    assert (code, message) == (grpc.StatusCode.UNIMPLEMENTED.value[0], "unknown method /test.Echo/Nothing")

"""The load generator's HTTP pool (harness/http_pool.py) against small local servers:
answers read whole, connections kept and reused, and every way a request can fail named."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from harness.http_pool import HttpPool, ServerDisconnectedError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


class _Server:
    def __init__(self, answer: Callable[[bytes, int], bytes | None]) -> None:
        self.answer = answer  # (request, n-th on this connection) -> bytes to write, or None
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                request = await _read_request(reader)
                self.requests.append(request)
                n += 1
                out = self.answer(request, n)
                if out is None:  # hang up without answering
                    break
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[:2]


@pytest.fixture
async def serve() -> AsyncIterator[
    Callable[[Callable[[bytes, int], bytes | None]], Awaitable[_Server]]
]:
    started: list[_Server] = []

    async def start(answer: Callable[[bytes, int], bytes | None]) -> _Server:
        server = _Server(answer)
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        started.append(server)
        return server

    yield start
    for server in started:
        assert server.server is not None
        server.server.close()


def _ok(body: bytes, status: int = 201, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_answers_are_read_whole_and_the_connection_is_kept(serve) -> None:
    server = await serve(lambda request, n: _ok(b'{"id": %d}' % n))
    pool = HttpPool(limit=4)
    request = HttpPool.request_bytes("POST", "http://h/orders", b'{"a":1}', "application/json")
    answers = [await pool.send(server.address, request) for _ in range(3)]
    pool.close()
    assert answers == [(201, b'{"id": 1}'), (201, b'{"id": 2}'), (201, b'{"id": 3}')]
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /orders HTTP/1.1\r\nHost: h\r\n")
    assert server.requests[0].endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


async def test_a_chunked_answer_is_read_whole(serve) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    server = await serve(lambda request, n: chunked)
    pool = HttpPool()
    assert await pool.send(server.address, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == (200, b"abcde")
    pool.close()


async def test_connection_close_is_honoured_and_the_next_request_reconnects(serve) -> None:
    server = await serve(lambda request, n: _ok(b"x", 200, "connection: close\r\n"))
    pool = HttpPool()
    for _ in range(2):
        assert await pool.send(server.address, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == (200, b"x")
    pool.close()
    assert server.connections == 2


async def test_concurrent_requests_use_at_most_limit_connections(serve) -> None:
    server = await serve(lambda request, n: _ok(b"y", 200))
    pool = HttpPool(limit=3)
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    answers = await asyncio.gather(*(pool.send(server.address, request) for _ in range(30)))
    pool.close()
    assert answers == [(200, b"y")] * 30
    assert server.connections <= 3


async def test_a_hang_up_before_the_answer_is_a_server_disconnect(serve) -> None:
    server = await serve(lambda request, n: None)
    pool = HttpPool()
    with pytest.raises(ServerDisconnectedError):
        await pool.send(server.address, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    pool.close()


async def test_a_half_answer_then_a_hang_up_is_a_server_disconnect() -> None:
    async def half_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half_then_close, "127.0.0.1", 0)
    pool = HttpPool()
    try:
        with pytest.raises(ServerDisconnectedError):
            await pool.send(
                server.sockets[0].getsockname()[:2], b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
            )
    finally:
        server.close()
        pool.close()


async def test_a_refused_connection_is_connection_refused() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = HttpPool()
    with pytest.raises(ConnectionRefusedError):
        await pool.send(("127.0.0.1", port), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")


async def test_a_request_cut_by_a_timeout_does_not_leave_its_connection_for_the_next() -> None:
    # The first answer comes late, after its caller gave up: the next request must not read
    # it as its own, so it goes out on a new connection.
    served = 0

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                await _read_request(reader)
                served += 1
                if served == 1:
                    await asyncio.sleep(0.3)
                writer.write(_ok(b"late" if served == 1 else b"fresh", 200))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(slow_first, "127.0.0.1", 0)
    address = server.sockets[0].getsockname()[:2]
    pool = HttpPool(limit=1)
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.send(address, request)
        assert await pool.send(address, request) == (200, b"fresh")
    finally:
        server.close()
        pool.close()


async def test_a_connection_idle_too_long_is_not_reused(serve, monkeypatch) -> None:
    # Servers close idle keep-alive connections (uvicorn after 5 s); reusing one as it
    # closes would fail a request the server never saw, so the pool opens a new one.
    monkeypatch.setattr("harness.http_pool.IDLE_REUSE_SECONDS", 0.05)
    server = await serve(lambda request, n: _ok(b"z", 200))
    pool = HttpPool()
    request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    await pool.send(server.address, request)
    await pool.send(server.address, request)  # at once: the same connection
    await asyncio.sleep(0.1)
    await pool.send(server.address, request)  # idle too long: a new one
    pool.close()
    assert server.connections == 2

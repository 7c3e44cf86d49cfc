"""A lean HTTP/1.1 keep-alive client for the load generator: one request at a time per
connection, requests given as ready-made bytes, answers parsed by httptools (the parser
uvicorn itself uses).

Why not aiohttp: the generator shares the two cores with what it measures, and aiohttp's
client costs about 0.6 ms of CPU per order (request and response objects, header
multidicts, cookie jar, tracing hooks), as much as MariaDB and RabbitMQ together. This
pool does only what an open-loop load needs: write the bytes, read the status and the
body, keep the connection for the next request.

Errors keep the names a report shows: ``ConnectionRefusedError`` (and other ``OSError``
raised by connect), ``ServerDisconnectedError`` (the connection closed before the whole
answer came), ``TimeoutError`` (no whole answer within the request's timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from urllib.parse import urlsplit

import httptools


class ServerDisconnectedError(ConnectionError):
    """The server closed the connection before its answer was complete."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``send`` is awaited by one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.closed = False
        self.idle_since = 0.0  # loop time it was last given back to the pool

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ServerDisconnectedError(f"unparsable answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ServerDisconnectedError("server closed the connection"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        body, self._body = b"".join(self._body), []
        if not self._parser.should_keep_alive():
            self.close()
        if answer is not None and not answer.done():
            answer.set_result((self._parser.get_status_code(), body))

    # the pool's side
    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self._transport is not None and self._answer is None
        answer = self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        try:
            return await answer
        except asyncio.CancelledError:
            self.close()  # the answer may still come: this connection cannot be reused
            raise

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: Exception) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)


# A connection idle longer than this is closed rather than reused: servers close idle
# keep-alive connections after a while (uvicorn: 5 s), and a request written as the
# server closes would fail although the server never saw it.
IDLE_REUSE_SECONDS = 2.0


class HttpPool:
    """Keep-alive connections to the hosts of the URLs it is asked for, at most ``limit``
    at once in all; a request waits for a free connection when all are busy."""

    def __init__(self, limit: int = 256) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}

    @staticmethod
    def request_bytes(method: str, url: str, body: bytes, content_type: str) -> bytes:
        """The whole request for ``url`` (scheme, host and port are the pool's key)."""
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("ascii") + body

    @staticmethod
    def address(url: str) -> tuple[str, int]:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only plain http URLs with a host: {url!r}")
        return parts.hostname, parts.port or 80

    async def send(self, address: tuple[str, int], request: bytes) -> tuple[int, bytes]:
        """Send ``request`` to ``address``: (status, body). Raises what the module
        docstring lists; a connection that failed is never reused."""
        loop = asyncio.get_running_loop()
        async with self._slots:
            idle = self._idle.setdefault(address, deque())
            connection = None
            while idle:
                candidate = idle.pop()
                if candidate.closed:
                    continue
                if loop.time() - candidate.idle_since > IDLE_REUSE_SECONDS:
                    candidate.close()
                    continue
                connection = candidate
                break
            if connection is None:
                _, connection = await loop.create_connection(_Connection, *address)
            answer = await connection.send(request)
            if not connection.closed:
                connection.idle_since = loop.time()
                idle.append(connection)
            return answer

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                with contextlib.suppress(Exception):
                    idle.pop().close()

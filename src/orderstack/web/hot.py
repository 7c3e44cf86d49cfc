"""Hot paths: requests answered without the framework's routing when a cheap answer exists.

A service's busiest requests (``GET /products/{id}`` from the cache, ``POST /orders``) cost
more in FastAPI's routing, dependency solving and response machinery than in their own
work. A ``HotPath`` matches such a request from the raw ASGI scope and answers it itself;
whatever it does not answer (a cache miss, a body it cannot read, a request with headers it
leaves to the route) it declines *before doing anything*, and the app answers as usual,
with the body replayed: validation, error shapes and the OpenAPI document stay the app's.
A transient database failure past that point is answered as the route's would be (its 503,
through ``on_error``) on a connection that stays open; any other exception goes up to the
app's outermost error handler.

The layer sits inside ``RequestId`` and ``InFlightLimit`` (every answer carries its
X-Request-ID, and an overloaded process still sheds) and records each request it answers
in ``HttpStats`` under the route's template, as ``HttpMetrics`` would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderstack.web.metrics import HttpStats

Headers = list[tuple[bytes, bytes]]
JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class HotAnswer:
    status: int
    body: bytes  # JSON
    headers: Headers


@dataclass(frozen=True, slots=True)
class RouteLabel:
    """What ``scope["route"]`` holds for a request a hot path took: its template, which
    the access log reads as it reads a route's."""

    path: str


class HotPath(Protocol):
    @property
    def method(self) -> str:
        """The request method it answers (GET, POST)."""

    @property
    def route(self) -> str:
        """The template of the app's route it stands in for (``/products/{product_id}``)."""

    @property
    def max_body(self) -> int:
        """The largest body it reads (0: it reads none); a larger one, or one of unknown
        length, is the app's (which answers 413 as its limit says)."""

    def match(self, scope: Scope) -> object | None:
        """The request's argument (an id, say) when this path may answer it, else None."""

    async def answer(self, scope: Scope, argument: object, body: bytes) -> HotAnswer | None:
        """The answer, or None to let the app answer (only before any side effect)."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The request's header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def json_body(scope: Scope) -> bool:
    """Whether the request says its body is JSON (``application/json``, any parameters)."""
    content_type = header(scope, b"content-type")
    return content_type is not None and (
        content_type.split(b";", 1)[0].strip().lower() == b"application/json"
    )


def _content_length(scope: Scope) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class _Disconnected(Exception):
    """The client went away while its body was read."""


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app after the layer read the body: the body once, then the
    client's own messages (a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class HotPaths:
    """ASGI middleware trying each hot path before the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Sequence[HotPath],
        stats: HttpStats | None = None,
        on_error: Callable[[str, BaseException], Response | None] = lambda path, exc: None,
    ) -> None:
        """``on_error(path, exc)``: the answer to an exception a hot path raised (the app's
        503 for a database failure), or None to let it go up."""
        self.app, self.paths, self.stats = app, tuple(paths), stats
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            for path in self.paths:
                if path.method != method:
                    continue
                argument = path.match(scope)
                if argument is None:
                    continue
                if await self._answer(path, argument, scope, receive, send):
                    return
                break
        await self.app(scope, receive, send)

    async def _answer(
        self, path: HotPath, argument: object, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Answer with ``path``; False when it declined (the app answers then, the body
        it read replayed)."""
        started = time.perf_counter()
        body = b""
        if path.max_body:
            length = _content_length(scope)
            if length is None or length > path.max_body:
                return False
            try:
                body = await _read_body(receive)
            except _Disconnected:
                return True  # nobody to answer
            if len(body) > path.max_body:
                await self.app(scope, _replaying(body, receive), send)
                return True
        # The route's template for the layers outside (the access log), as routing would
        # set it; taken back when the app answers after all (it routes, or refuses before).
        scope["route"] = RouteLabel(path.route)
        try:
            answer = await path.answer(scope, argument, body)
        except Exception as exc:
            response = self.on_error(scope["path"], exc)
            if response is None:
                self._record(path, 500, started)  # what the app's error handler answers
                raise
            await response(scope, receive, send)
            self._record(path, response.status_code, started)
            return True
        except asyncio.CancelledError:
            raise  # its deadline passed (web/deadline.py answers and counts it) or a stop
        except BaseException:
            self._record(path, 500, started)
            raise
        if answer is None:
            del scope["route"]
            if path.max_body:
                await self.app(scope, _replaying(body, receive), send)
                return True
            return False
        headers = [(b"content-length", str(len(answer.body)).encode()), JSON, *answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})
        self._record(path, answer.status, started)
        return True

    def _record(self, path: HotPath, status: int, started: float) -> None:
        if self.stats is not None:
            self.stats.record(path.method, path.route, status, time.perf_counter() - started)


__all__ = ["HotAnswer", "HotPath", "HotPaths", "header", "json_body"]

"""One handler per endpoint, and a fast path into it that skips FastAPI's routing.

Each busy endpoint (``GET /products/{id}``, ``POST /products``, ``POST /orders``) has one
handler, a plain function from the parsed request to its ``Answer`` (status, JSON body,
headers) through the use case: the FastAPI route calls it and sends ``answer.response()``;
the fast path (``HotPaths``, a raw-ASGI layer) calls the very same function and sends the
same answer as ASGI messages. What an endpoint answers (its body, its headers, its
refusals as ServiceErrors) is written once, in its handler; what is common to all is
written once here and in the app:

- errors: a ServiceError or a transient database failure the handler raises is answered by
  the app's own error mapping (web/errors.py ``handled_error``), on either path; any other
  exception goes up to the app's outermost error handler;
- metrics and the access log: the layer sits inside ``HttpMetrics`` and sets
  ``scope["route"]`` to the endpoint's template, as routing does, so each request is
  counted once, by the same middleware, under the same label;
- request ids, shedding, deadlines: the layer sits inside ``RequestId``, ``InFlightLimit``
  and ``RequestDeadline``.

``check_fast_paths`` holds each fast path to its route: the route exists, has no
dependency the fast path would skip (a guard), and every request header it reads is one the
fast path leaves to it; otherwise the app does not start.

What the fast path parses is the route's too: the path by the route's template (an id in
digits, within the id range: ``EntityPath``), the body by the route's model read with
``read_json`` (``JsonBodyPath``). Whatever it does not take (a body that does not
validate, another content type, a header the route reads, a cache miss the handler
declines) it leaves to the route *before doing anything*, the body replayed: validation
messages, the error shapes and the OpenAPI document stay the route's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderstack.web.auth import Caller, Guard, caller_of
from orderstack.web.inputs import read_json
from orderstack.wire import MAX_ID

Headers = tuple[tuple[bytes, bytes], ...]
JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class Answer:
    """An endpoint's answer as its handler makes it: sent by the route as a Response
    (``response()``) and by the fast path as ASGI messages, the same bytes either way."""

    status: int
    body: bytes  # JSON
    headers: Headers = ()  # beyond content-type and content-length (lower-case names)

    def response(self) -> Response:
        """The answer as the route returns it."""
        response = Response(self.body, self.status, media_type="application/json")
        response.raw_headers.extend(self.headers)
        return response

    def start(self) -> Message:
        """The ``http.response.start`` message of the answer."""
        headers = [(b"content-length", str(len(self.body)).encode()), JSON, *self.headers]
        return {"type": "http.response.start", "status": self.status, "headers": headers}


@dataclass(frozen=True, slots=True)
class RouteLabel:
    """What ``scope["route"]`` holds for a request the fast path took: its template, which
    the metrics and the access log read as they read a route's."""

    path: str


class HotPath(Protocol):
    """A fast path into an endpoint's handler."""

    @property
    def method(self) -> str:
        """The request method it answers (GET, POST)."""

    @property
    def route(self) -> str:
        """The template of the route whose handler it calls (``/products/{product_id}``)."""

    @property
    def max_body(self) -> int:
        """The largest body it reads (0: it reads none); a larger one, or one of unknown
        length, is the route's (which answers 413 as its limit says)."""

    @property
    def guard(self) -> Guard | None:
        """The role its route requires (the route's one dependency, the same object), checked
        on the request's caller before the handler runs; None: an open route."""

    @property
    def route_headers(self) -> frozenset[bytes]:
        """The request headers (lower case) it leaves to the route: a request naming one
        is the route's. Every header the route reads must be one (``check_fast_paths``)."""

    def match(self, scope: Scope) -> object | None:
        """The request's argument (an id, say) when this path may take it, else None."""

    def answer(self, scope: Scope, argument: object, body: bytes) -> Awaitable[Answer | None]:
        """The handler's answer, or None to let the route answer (only before any side
        effect). Raises what the handler raises."""


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


M = TypeVar("M", bound=BaseModel)  # the route's model of the body


class EntityPath:
    """The fast path of ``GET <prefix>{id}``: the id as the route's ``EntityId`` reads it
    (ASCII digits, 1 to MAX_ID), into ``handler(id)``; anything else is the route's."""

    method = "GET"
    max_body = 0
    route_headers: frozenset[bytes] = frozenset()

    def __init__(
        self,
        route: str,
        handler: Callable[[int], Awaitable[Answer | None]],
        *,
        guard: Guard | None = None,
    ) -> None:
        prefix, _, rest = route.partition("{")
        if not prefix.endswith("/") or not rest.endswith("}") or "/" in rest:
            raise ValueError(f"{route}: not a template ending in one path parameter")
        self.route, self._prefix, self._handler = route, prefix, handler
        self.guard = guard

    def match(self, scope: Scope) -> int | None:
        path: str = scope["path"]
        if not path.startswith(self._prefix):
            return None
        digits = path[len(self._prefix) :]
        if not (0 < len(digits) <= 19 and digits.isascii() and digits.isdigit()):
            return None
        entity_id = int(digits)
        return entity_id if 1 <= entity_id <= MAX_ID else None

    def answer(self, scope: Scope, argument: object, body: bytes) -> Awaitable[Answer | None]:
        assert isinstance(argument, int)
        return self._handler(argument)  # the handler's own coroutine: no frame of ours


class JsonBodyPath(Generic[M]):
    """The fast path of ``<method> <route>`` with a JSON body: the body read by
    ``read_json`` and validated by the route's ``model``, into ``handler(body, caller)``. A
    request naming one of ``route_headers`` (which the route reads), of another content
    type, or whose body does not validate is the route's."""

    def __init__(
        self,
        method: str,
        route: str,
        model: type[M],
        handler: Callable[[M, Caller], Awaitable[Answer]],
        *,
        max_body: int,
        route_headers: Sequence[bytes] = (),
        guard: Guard | None = None,
    ) -> None:
        self.method, self.route, self.max_body = method, route, max_body
        self._model, self._handler = model, handler
        self.route_headers = frozenset(route_headers)
        self.guard = guard

    def match(self, scope: Scope) -> bool | None:
        if scope["path"] != self.route:
            return None
        if self.route_headers and any(k in self.route_headers for k, _ in scope["headers"]):
            return None
        return True if json_body(scope) else None

    async def answer(self, scope: Scope, argument: object, body: bytes) -> Answer | None:
        try:
            parsed = self._model.model_validate(read_json(body))
        except (ValidationError, ValueError):
            return None  # the route answers it, in its words
        return await self._handler(parsed, caller_of(scope))


def check_fast_paths(routes: Sequence[BaseRoute], paths: Sequence[HotPath]) -> None:
    """Refuse fast paths that could answer what their route would not: each must stand for
    one of ``routes`` (a router's: prefix included, its router's dependencies its own), of
    the same method and template, whose only dependency is the path's own guard (the same
    object, which the path checks itself; any other, the path would skip) and that reads
    no request header the path does not leave to it. Raises ValueError naming the path.
    So a header or a guard added to a route cannot be forgotten on its fast path: the app
    refuses to start."""
    for path in paths:
        route = next(
            (
                r
                for r in routes
                if isinstance(r, APIRoute)
                and r.path == path.route
                and path.method in (r.methods or ())
            ),
            None,
        )
        where = f"the fast path of {path.method} {path.route}"
        if route is None:
            raise ValueError(f"{where} has no route")
        depends = [d.call for d in route.dependant.dependencies]
        if depends != ([path.guard] if path.guard is not None else []):
            raise ValueError(f"{where} would skip its route's dependencies or guard")
        read = {
            (f.alias or f.name).replace("_", "-").lower().encode()
            for f in route.dependant.header_params
        }
        if not read <= path.route_headers:
            unread = sorted(h.decode() for h in read - path.route_headers)
            raise ValueError(f"{where} does not leave the headers {unread} to its route")


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


def replaying(body: bytes, receive: Receive, *, more_body: bool = False) -> Receive:
    """``receive`` for the app after a layer read the body (all of it, or with
    ``more_body`` the start of it): that body once, then the client's own messages (the
    rest of the body, a disconnect). The one replay of every layer that reads a body first
    (here, web/limits.py)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": more_body}
        return await receive()

    return replay


class HotPaths:
    """ASGI middleware trying each fast path before the app's routing."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: Sequence[HotPath],
        on_error: Callable[[str, BaseException], Response | None] = lambda path, exc: None,
    ) -> None:
        """``on_error(path, exc)``: the app's answer to an exception a handler raised (a
        ServiceError's, a database failure's 503: web/errors.py ``handled_error``), or
        None to let it go up."""
        self.app, self.paths = app, tuple(paths)
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
                await self.app(scope, replaying(body, receive), send)
                return True
        # The route's template for the layers outside (metrics, the access log), as routing
        # would set it; taken back when the app answers after all (it routes, or refuses).
        scope["route"] = RouteLabel(path.route)
        try:
            if path.guard is not None:
                path.guard.check(caller_of(scope))  # as the route's dependency would
            answer = await path.answer(scope, argument, body)
        except asyncio.CancelledError:
            raise  # its deadline passed (web/deadline.py answers and counts it) or a stop
        except Exception as exc:
            response = self.on_error(scope["path"], exc)
            if response is None:
                raise
            await response(scope, receive, send)
            return True
        if answer is None:
            del scope["route"]
            if path.max_body:
                await self.app(scope, replaying(body, receive), send)
                return True
            return False
        await send(answer.start())
        await send({"type": "http.response.body", "body": answer.body})
        return True


__all__ = [
    "Answer",
    "EntityPath",
    "HotPath",
    "HotPaths",
    "JsonBodyPath",
    "check_fast_paths",
    "header",
    "json_body",
    "replaying",
]

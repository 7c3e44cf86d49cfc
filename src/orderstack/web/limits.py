"""Request limits: the body size, enforced before the body is parsed, and the requests in
flight, beyond which new ones are turned away at once (load shedding); and the settings of
the limits the server enforces before the app (``edge_limits``, serving.py).

A request's body is read in full before it may take an in-flight slot (``InFlightLimit``
reads it first, ``read_body_first``): a client sending its body slowly, or never, holds its
own connection (until the server's body deadline, ``BODY_TIMEOUT_SECONDS``) but no slot, so
a few such sockets cannot turn every other request away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderstack.admission import ConcurrencyLimit
from orderstack.config import Settings
from orderstack.serving import EDGE_REFUSALS, EdgeLimits
from orderstack.web.errors import ErrorStyle, error_body
from orderstack.web.hot import replaying
from orderstack.web.streams import is_event_stream


class BodySizeLimit:
    """Answers 413 when the declared or the streamed body exceeds ``max_bytes``, and reads
    a body in full before the layers inside see the request, then replays it to them.

    A declared length over the limit is refused unread; a body without one (chunked) is
    read up to ``max_bytes`` + 1 bytes: a limit raised from inside the app's own body
    parsing would be turned into a 400 by the framework. A request without a body (no
    Content-Length, no Transfer-Encoding: a GET) passes at once, with nothing replayed. A
    client gone before its body arrived is not answered, and reaches nothing inside.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        style: ErrorStyle,
        counts: LimitCounts | None = None,
    ) -> None:
        self.app, self.max_bytes, self.style = app, max_bytes, style
        self.counts = counts or LimitCounts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = True
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._reject(send)
                return
            if int(declared) == 0:
                await self.app(scope, receive, send)
                return
        elif not chunked:
            await self.app(scope, receive, send)  # no body
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body arrived: nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _reject(self, send: Send) -> None:
        self.counts.too_large += 1
        await send_json(
            send,
            413,
            error_body(
                self.style,
                413,
                "PAYLOAD_TOO_LARGE",
                f"request body larger than {self.max_bytes} bytes",
            ),
        )


class LimitCounts:
    """Requests turned away by the admission (``shed``), cut by their deadline
    (``timed_out``) or because their client went away (``client_gone``, web/deadline.py),
    refused for their body's size (``too_large``, 413), or by the server before the app
    (``edge``, by reason: serving.py ``EDGE_REFUSALS``): plain ints read by ``/metrics``."""

    __slots__ = ("client_gone", "edge", "shed", "timed_out", "too_large")

    def __init__(self) -> None:
        self.shed = 0
        self.timed_out = 0
        self.client_gone = 0
        self.too_large = 0
        self.edge = dict.fromkeys(EDGE_REFUSALS, 0)


@dataclass(frozen=True)
class AdmissionGate:
    """A refusal at the door for the requests of one method and path: ``admit()`` says
    whether to take one now; ``why`` is the refusal's message."""

    method: str
    path: str
    admit: Callable[[], bool]
    why: str

    def covers(self, scope: Scope) -> bool:
        return scope["path"] == self.path and scope["method"] == self.method


class InFlightLimit:
    """Answers 503 (with Retry-After) when the requests already in flight reach the process's
    adaptive limit (``ConcurrencyLimit``, admission.py): at most ``max_in_flight``, shrinking
    while even the fastest answers are slower than ``target`` seconds. Past its capacity a
    service would otherwise queue without bound: every answer then comes late, clients give
    up and retry, and the work done for them is wasted, so throughput collapses just when it
    is most needed. A quick 503 keeps the admitted requests fast and tells the rest to come
    back. Probes and ``/metrics`` (``exempt`` paths) always pass: an overloaded service is
    when an operator most needs to see inside it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        style: ErrorStyle,
        target: float = 0.1,
        exempt: frozenset[str] = frozenset({"/livez", "/health", "/readyz", "/metrics"}),
        counts: LimitCounts | None = None,
        gates: Sequence[AdmissionGate] = (),
        max_body: int | None = None,
    ) -> None:
        """``gates``: further refusals at the door, for the requests each one covers (new
        orders while orders settle late, say). With ``max_body``, a request of a method
        that may carry a body has it read first, up to that size (``read_body_first``),
        before it takes a slot."""
        self.app, self.style, self.exempt = app, style, exempt
        self.gates = tuple(gates)
        self.max_body = max_body
        self.limit = ConcurrencyLimit(target=target, maximum=max_in_flight)
        self.counts = counts or LimitCounts()
        self._watching: asyncio.AbstractEventLoop | None = None

    @property
    def in_flight(self) -> int:
        return self.limit.in_flight

    def _watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the limit how late a timer every LAG_PERIOD runs (a callback chain, not a
        task: it ends with its loop, nothing to stop)."""
        self._watching = loop

        def tick(due: float) -> None:
            now = loop.time()
            self.limit.lagged(now - due)
            loop.call_at(now + LAG_PERIOD, tick, now + LAG_PERIOD)

        loop.call_at(loop.time() + LAG_PERIOD, tick, loop.time() + LAG_PERIOD)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt or is_event_stream(scope):
            await self.app(scope, receive, send)  # a stream is bounded by its route
            return
        if self._watching is None:
            self._watch_loop(asyncio.get_running_loop())
        for gate in self.gates:
            if gate.covers(scope) and not gate.admit():
                self.counts.shed += 1
                await send_json(send, 503, overloaded_body(self.style, gate.why), [RETRY_AFTER])
                return
        if self.max_body is not None and scope["method"] not in BODILESS_METHODS:
            replayed = await read_body_first(scope, receive, self.max_body)
            if replayed is None:
                return  # the client went away before its body arrived: nobody to answer
            receive = replayed
        if not self.limit.try_acquire():
            self.counts.shed += 1
            await send_json(send, 503, overloaded_body(self.style), [RETRY_AFTER])
            return
        started = time.monotonic()
        status = 500

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            # A 503 from deeper in (a refusal, a dependency down) is no service time.
            self.limit.release(time.monotonic() - started, served=status != 503)


RETRY_AFTER = (b"retry-after", b"1")
# Methods whose routes read no body: their requests take a slot at once (a GET answered
# from the cache pays nothing for the rule below).
BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def read_body_first(scope: Scope, receive: Receive, max_bytes: int) -> Receive | None:
    """``receive`` for the layers inside once the request's body has arrived, replaying it;
    None when the client went away first. A body declared larger than ``max_bytes`` is left
    unread, and a chunked one is read only up to ``max_bytes`` + 1 bytes (what was read is
    replayed, then the rest as it comes): ``BodySizeLimit`` inside answers 413 for them."""
    declared: bytes | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value
        elif name == b"transfer-encoding":
            chunked = True
    if declared is not None:
        if not declared.isdigit() or int(declared) > max_bytes or int(declared) == 0:
            return receive
    elif not chunked:
        return receive
    chunks: list[bytes] = []
    size = 0
    more = True
    while more and size <= max_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = bool(message.get("more_body", False))
    return replaying(b"".join(chunks), receive, more_body=more)


LAG_PERIOD = 0.01  # seconds between the loop-lag timer's runs


def overloaded_body(style: ErrorStyle, what: str = "too many requests in flight") -> dict[str, Any]:
    """The body of a 503 OVERLOADED: the code in both styles, since a client (our order
    service) must tell shedding, which a retry makes worse, from an outage."""
    return error_body(style, 503, "OVERLOADED", what, coded=True)


async def send_json(
    send: Send, status: int, content: dict[str, Any], extra_headers: list[Any] | None = None
) -> None:
    body = orjson.dumps(content)
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def edge_limits(
    settings: Settings, style: ErrorStyle, counts: LimitCounts | None = None
) -> EdgeLimits:
    """The limits the server of an app of ``style`` enforces before the app sees a request
    (serving.py), from the settings; its answers (408, 431, 503) in the app's error style,
    counted by reason in ``counts.edge``."""

    def refusal(status: int, code: str, message: str) -> bytes:
        return orjson.dumps(error_body(style, status, code, message, coded=True))

    edge = (counts or LimitCounts()).edge

    def refused(reason: str) -> None:
        edge[reason] = edge.get(reason, 0) + 1

    return EdgeLimits(
        max_header_bytes=settings.MAX_HEADER_BYTES,
        header_timeout=settings.HEADER_TIMEOUT_SECONDS,
        body_timeout=settings.BODY_TIMEOUT_SECONDS,
        keep_alive=settings.KEEP_ALIVE_SECONDS,
        max_connections=settings.MAX_CONNECTIONS,
        max_requests_per_connection=settings.MAX_REQUESTS_PER_CONNECTION,
        refusal=refusal,
        refused=refused,
    )

"""Request limits: the body size, enforced before the body is parsed, and the requests in
flight, beyond which new ones are turned away at once (load shedding)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderstack.web.errors import ErrorStyle, error_body


class BodySizeLimit:
    """Answers 413 when the declared or the streamed body exceeds ``max_bytes``.

    A body without a Content-Length (chunked) is read up front, at most ``max_bytes`` + 1
    bytes, and replayed to the app: a limit raised from inside the app's own body parsing
    would be turned into a 400 by the framework.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, style: ErrorStyle) -> None:
        self.app, self.max_bytes, self.style = app, max_bytes, style

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
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
    """Requests turned away by the admission (``shed``) and cut by their deadline
    (``timed_out``, web/deadline.py): plain ints read by ``/metrics``."""

    __slots__ = ("shed", "timed_out")

    def __init__(self) -> None:
        self.shed = 0
        self.timed_out = 0


class InFlightLimit:
    """Answers 503 (with Retry-After) when ``max_in_flight`` requests are already being
    served. Past its capacity a service would otherwise queue without bound: every answer
    then comes late, clients give up and retry, and the work done for them is wasted, so
    throughput collapses just when it is most needed. A quick 503 keeps the admitted
    requests fast and tells the rest to come back. Probes and ``/metrics`` (``exempt`` paths)
    always pass: an overloaded service is when an operator most needs to see inside it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        style: ErrorStyle,
        exempt: frozenset[str] = frozenset({"/livez", "/health", "/readyz", "/metrics"}),
        counts: LimitCounts | None = None,
    ) -> None:
        self.app, self.max_in_flight, self.style, self.exempt = app, max_in_flight, style, exempt
        self.counts = counts or LimitCounts()
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.counts.shed += 1
            await send_json(
                send,
                503,
                # The code in both styles: a client (our order service) must tell shedding,
                # which a retry makes worse, from an outage.
                {
                    **error_body(self.style, 503, "OVERLOADED", "too many requests in flight"),
                    "code": "OVERLOADED",
                },
                [(b"retry-after", b"1")],
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


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

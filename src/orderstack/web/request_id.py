"""``X-Request-ID``: one id per request, in every log line written while it is served.

The client's ``X-Request-ID`` is kept when it is usable (printable ASCII without spaces,
at most 128 characters: ``orderstack.logging.valid_request_id``); otherwise, or without
one, a fresh uuid4 is made. The id is bound to the request's logs (structlog contextvars,
key ``request_id``), echoed in the response's ``X-Request-ID``, and stored with the outbox
rows the request writes (messaging/outbox.py), whence it travels with the events.

With ``access_log``, one JSON line per request when it has been answered: method, route
(the template, ``/orders/{order_id}``, never the raw path), status, duration_ms and the
request_id.
"""

from __future__ import annotations

import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderstack.logging import REQUEST_ID_KEY, new_request_id, valid_request_id

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
UNMATCHED = "unmatched"  # the route of a request no route matched (as on /metrics)

access_log = structlog.get_logger("orderstack.access")


def _incoming(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == _HEADER_KEY:
            try:
                return valid_request_id(value.decode("ascii"))
            except UnicodeDecodeError:
                return None
    return None


class RequestId:
    """Outermost middleware: every answer, a shed one or an error too, carries the id."""

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app, self.access_log = app, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming(scope) or new_request_id()
        header = (_HEADER_KEY, request_id.encode())
        status = 500  # what the client gets when the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0] != _HEADER_KEY]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(**{REQUEST_ID_KEY: request_id}):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.access_log:
                    route = scope.get("route")
                    access_log.info(
                        "request",
                        method=scope["method"],
                        route=getattr(route, "path", UNMATCHED),
                        status=status,
                        duration_ms=round((time.perf_counter() - started) * 1000, 3),
                    )


__all__ = ["HEADER", "RequestId"]

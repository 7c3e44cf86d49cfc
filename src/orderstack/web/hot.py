"""Hot paths: requests answered without the framework's routing when a cheap answer exists.

A service's busiest read (``GET /products/{id}`` from the cache) costs far more in
FastAPI's routing, dependency solving and response machinery than in its own work. A
``HotPath`` matches such a request from the raw ASGI scope and answers it from bytes it
already has; when it has none (a cache miss, a tombstone, an id it cannot read) it
declines and the app answers as usual, so errors, validation and the OpenAPI document
stay the app's. The layer sits inside ``RequestId`` and ``InFlightLimit`` (the answer
carries its X-Request-ID, and an overloaded process still sheds) and records the request
in ``HttpStats`` under the route's template, as ``HttpMetrics`` would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from orderstack.web.metrics import HttpStats

Headers = list[tuple[bytes, bytes]]
JSON = (b"content-type", b"application/json")


class HotPath(Protocol):
    @property
    def route(self) -> str:
        """The template of the app's route it stands in for (``/products/{product_id}``)."""

    def match(self, scope: Scope) -> int | None:
        """The request's argument (an id) when this path may answer it, else None."""

    async def answer(self, scope: Scope, argument: int) -> tuple[bytes, Headers] | None:
        """A 200's JSON body and extra headers, or None to let the app answer."""


class HotPaths:
    """ASGI middleware trying each hot path on GET requests before the app."""

    def __init__(
        self, app: ASGIApp, *, paths: Sequence[HotPath], stats: HttpStats | None = None
    ) -> None:
        self.app, self.paths, self.stats = app, tuple(paths), stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            for path in self.paths:
                argument = path.match(scope)
                if argument is None:
                    continue
                started = time.perf_counter()
                answered = await path.answer(scope, argument)
                if answered is None:
                    break
                body, headers = answered
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-length", str(len(body)).encode()),
                            JSON,
                            *headers,
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                if self.stats is not None:
                    self.stats.record("GET", path.route, 200, time.perf_counter() - started)
                return
        await self.app(scope, receive, send)


__all__ = ["HotPath", "HotPaths"]

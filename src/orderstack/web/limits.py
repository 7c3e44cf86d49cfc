"""Request body size limit, enforced before the body is parsed."""

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
        body = orjson.dumps(
            error_body(
                self.style,
                413,
                "PAYLOAD_TOO_LARGE",
                f"request body larger than {self.max_bytes} bytes",
            )
        )
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

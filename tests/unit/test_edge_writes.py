"""The edge writes an answer of known length in one write, its head with its body
(serving.py ``_HeadWithBody``): a client sees no head before the body is there. A streamed
answer's head (no Content-Length: an SSE stream's) goes at once, its client waiting for it.
A real uvicorn server on loopback with the edge protocol, and a raw socket as the client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from orderstack.serving import _listen, protocol_for
from tests.unit.test_edge_protocol import FAST, _QuietServer

Scope = dict[str, Any]
BODY = b'{"ok":true}'  # 11 bytes


def gated_app(gate: asyncio.Event) -> Any:
    """Starts each answer, then waits for ``gate`` before its body: ``/known`` with a
    Content-Length, ``/streamed`` without one (chunked)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        headers = [(b"content-type", b"application/json")]
        if scope["path"] == "/known":
            headers.append((b"content-length", b"11"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await gate.wait()
        await send({"type": "http.response.body", "body": BODY})

    return app


@asynccontextmanager
async def served(gate: asyncio.Event) -> AsyncIterator[int]:
    sockets = _listen("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    config = uvicorn.Config(
        gated_app(gate), http=protocol_for(FAST), lifespan="off", log_config=None
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, no event
            await asyncio.sleep(0.01)
        yield port
    finally:
        gate.set()
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def first_bytes(reader: asyncio.StreamReader, seconds: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(4096), seconds)
    except TimeoutError:
        return b""


@pytest.mark.parametrize("path", ["/known", "/streamed"])
async def test_a_head_waits_for_its_body_only_when_its_length_is_known(path: str) -> None:
    gate = asyncio.Event()
    async with served(gate) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            before_body = await first_bytes(reader, 0.3)
            gate.set()
            answer = before_body
            while not answer.endswith((b"}", b"0\r\n\r\n")):
                more = await first_bytes(reader, 2.0)
                assert more, f"the answer stopped at {answer!r}"
                answer += more
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    if path == "/known":
        assert before_body == b""  # the head was held for the body
        head, body = answer.split(b"\r\n\r\n", 1)
        assert b"content-length: 11" in head and body == BODY
    else:
        assert before_body.startswith(b"HTTP/1.1 200 OK\r\n")  # at once
        assert before_body.endswith(b"\r\n\r\n") and b"transfer-encoding: chunked" in before_body

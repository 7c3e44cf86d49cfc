"""The edge (serving.py ``EdgeProtocol``): uvicorn's httptools protocol with a head size cap,
head and body deadlines, a connection cap, bounded keep-alive. A real uvicorn server on
loopback, in this process, with a small app; raw sockets (asyncio streams) as clients, so
that a head can arrive in pieces, slowly, or never. The same probes against the real
processes: tests/e2e/test_edge_limits.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace

import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request

from orderstack.config import load_settings
from orderstack.serving import EdgeLimits, _listen, protocol_for, set_edge_limits
from orderstack.web.limits import edge_limits

FAST = EdgeLimits(
    max_header_bytes=4096,
    header_timeout=0.5,
    body_timeout=0.5,
    keep_alive=2.0,
    max_connections=4,
)


class _QuietServer(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # a test's server: pytest keeps its own signal handlers


def _app(seen: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        seen.append("echo started")
        body = await request.body()
        return {"bytes": len(body)}

    return app


@asynccontextmanager
async def served(limits: EdgeLimits, seen: list[str] | None = None) -> AsyncIterator[int]:
    """A server with ``limits`` on a free loopback port; yields the port."""
    app = _app(seen if seen is not None else [])
    set_edge_limits(app, limits)
    sockets = _listen("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    config = uvicorn.Config(
        app,
        http=protocol_for(limits),
        lifespan="off",
        log_config=None,
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]
        timeout_graceful_shutdown=1,
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, no event
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def answer(
    reader: asyncio.StreamReader, within: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer: status, headers (lower case), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), within)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), within)
    return status, headers, body


async def closed(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    """Whether the server closes the connection within ``within`` seconds."""
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except (TimeoutError, ConnectionError):
        return False


def get(path: str = "/ok", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


async def test_a_head_within_the_cap_is_served_and_one_past_it_is_431_and_closed() -> None:
    async with served(FAST) as port:
        reader, writer = await connect(port)
        writer.write(get(extra=b"X-Fill: " + b"a" * 3500 + b"\r\n"))
        assert (await answer(reader))[0] == 200

        reader, writer = await connect(port)
        writer.write(get(extra=b"X-Fill: " + b"a" * 5000 + b"\r\n"))
        status, headers, body = await answer(reader)
        assert status == 431 and headers["connection"] == "close"
        assert orjson.loads(body)["code"] == "HEADERS_TOO_LARGE"
        assert await closed(reader)


async def test_a_head_arriving_in_pieces_is_refused_once_past_the_cap_before_it_ends() -> None:
    """One header field that never ends: httptools would buffer it whole."""
    async with served(FAST) as port:
        reader, writer = await connect(port)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        for _ in range(20):  # 20,000 bytes of one field, its end never sent
            writer.write(b"a" * 1000)
            await writer.drain()
            await asyncio.sleep(0.005)
        status, _, body = await answer(reader)
        assert status == 431 and orjson.loads(body)["code"] == "HEADERS_TOO_LARGE"
        assert await closed(reader)


async def test_pipelined_requests_and_large_bodies_are_not_counted_as_head() -> None:
    """A body of 20 KiB and a request behind it, in one write: neither head is too large."""
    async with served(FAST) as port:
        reader, writer = await connect(port)
        body = b"b" * 20_000
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 20000\r\n\r\n" + body + get()
        )
        status, _, first = await answer(reader)
        assert status == 200 and orjson.loads(first) == {"bytes": 20_000}
        assert (await answer(reader))[0] == 200


async def test_a_head_begun_behind_a_body_and_ended_in_the_next_read_is_still_measured() -> None:
    """The first bytes of a head arrive with the end of the request before it: they count."""
    async with served(FAST) as port:
        reader, writer = await connect(port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
            + b"b" * 100
            + b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: "
            + b"a" * 3000
        )
        await writer.drain()
        assert (await answer(reader))[0] == 200
        writer.write(b"a" * 3000 + b"\r\n\r\n")  # the head: over 6,000 bytes in all
        status, _, body = await answer(reader)
        assert status == 431 and orjson.loads(body)["code"] == "HEADERS_TOO_LARGE"


async def test_a_head_that_does_not_arrive_in_time_is_408_and_closed() -> None:
    async with served(FAST) as port:
        silent, _ = await connect(port)  # sends nothing at all
        started = time.monotonic()
        status, headers, body = await answer(silent)
        assert status == 408 and headers["connection"] == "close"
        assert orjson.loads(body)["code"] == "REQUEST_TIMEOUT"
        assert 0.4 <= time.monotonic() - started < 2
        assert await closed(silent)

        # A byte at a time, each in time for a per-read timeout: the head's deadline is whole.
        reader, writer = await connect(port)
        started = time.monotonic()
        for byte in get():
            if reader.at_eof() or time.monotonic() - started > 3:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.05)
        assert (await answer(reader))[0] == 408
        assert time.monotonic() - started < 2


async def test_a_body_not_arriving_in_time_is_408_and_the_app_sees_its_client_gone() -> None:
    seen: list[str] = []
    async with served(FAST, seen) as port:
        reader, writer = await connect(port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\n\r\n")
        started = time.monotonic()
        status, _, body = await answer(reader)
        assert status == 408 and "body" in orjson.loads(body)["message"]
        assert 0.4 <= time.monotonic() - started < 2
        assert await closed(reader)
        assert seen == ["echo started"]


async def test_an_idle_kept_alive_connection_is_closed_and_its_next_head_has_a_fresh_deadline() -> (
    None
):
    async with served(FAST) as port:
        reader, writer = await connect(port)
        writer.write(get())
        assert (await answer(reader))[0] == 200
        await asyncio.sleep(1.0)  # idle longer than the head deadline, shorter than keep-alive
        writer.write(get())
        assert (await answer(reader))[0] == 200
        started = time.monotonic()
        assert await closed(reader, within=5)
        assert 1.5 <= time.monotonic() - started < 3.5  # keep_alive=2


async def test_connections_past_the_cap_are_503_and_closed_and_the_others_served() -> None:
    refused: list[str] = []
    async with served(replace(FAST, refused=refused.append)) as port:
        held = [await connect(port) for _ in range(FAST.max_connections)]
        await asyncio.sleep(0.05)
        reader, writer = await connect(port)
        writer.write(get())
        status, headers, body = await answer(reader)
        assert status == 503 and headers["retry-after"] == "1"
        assert orjson.loads(body)["code"] == "OVERLOADED"
        assert await closed(reader)
        held_reader, held_writer = held[0]
        held_writer.write(get())  # a connection within the cap is served
        assert (await answer(held_reader))[0] == 200
        for _, w in held:
            w.close()
        await asyncio.sleep(0.1)
        reader, writer = await connect(port)
        writer.write(get())
        assert (await answer(reader))[0] == 200
    assert refused == ["connections"]


async def test_each_refusal_is_told_with_its_reason() -> None:
    refused: list[str] = []
    async with served(replace(FAST, refused=refused.append)) as port:
        too_large, writer = await connect(port)
        writer.write(get(extra=b"X-Fill: " + b"a" * 5000 + b"\r\n"))
        slow_body, writer = await connect(port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\n\r\n")
        silent, _ = await connect(port)
        statuses = [(await answer(r))[0] for r in (too_large, slow_body, silent)]
    assert statuses == [431, 408, 408]
    assert sorted(refused) == ["body_timeout", "head_timeout", "head_too_large"]


async def test_a_connection_says_close_after_its_last_allowed_request() -> None:
    limits = EdgeLimits(max_requests_per_connection=2)
    async with served(limits) as port:
        reader, writer = await connect(port)
        writer.write(get())
        assert "connection" not in (await answer(reader))[1]
        writer.write(get())
        assert (await answer(reader))[1]["connection"] == "close"
        assert await closed(reader)


@pytest.mark.parametrize(
    ("style", "keys"), [("seed", {"error", "code"}), ("nest", {"statusCode", "message", "code"})]
)
def test_the_edge_limits_come_from_the_settings_and_answer_in_the_apps_style(
    style: str, keys: set[str]
) -> None:
    settings = load_settings(
        MAX_HEADER_BYTES=2048,
        HEADER_TIMEOUT_SECONDS=3,
        BODY_TIMEOUT_SECONDS=4,
        KEEP_ALIVE_SECONDS=5,
        MAX_CONNECTIONS=6,
        MAX_REQUESTS_PER_CONNECTION=7,
    )
    limits = edge_limits(settings, style)  # type: ignore[arg-type]
    assert (
        limits.max_header_bytes,
        limits.header_timeout,
        limits.body_timeout,
        limits.keep_alive,
        limits.max_connections,
        limits.max_requests_per_connection,
    ) == (2048, 3, 4, 5, 6, 7)
    body = orjson.loads(limits.refusal(431, "HEADERS_TOO_LARGE", "too large"))
    assert keys <= body.keys() and body["code"] == "HEADERS_TOO_LARGE"

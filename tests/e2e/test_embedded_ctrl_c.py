"""Ctrl-C on `orderstack dev` answers what is in flight, on both services, then exits 0:
requests whose bodies are still arriving when SIGINT comes get their 201, as with SIGTERM
(README "Stopping"). Before, the first service to stop raised the signal again as a
KeyboardInterrupt and cut the other's requests with a plain-text 500."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import orjson
import pytest

from harness.processes import EmbeddedDev

from .workflows import create_product

pytestmark = pytest.mark.e2e

PRODUCT = b'{"name": "Slow", "price": 1, "qty": 5}'


async def _slow_post(port: int, path: str, body: bytes, pause: float) -> bytes:
    """POST whose body arrives in two halves ``pause`` seconds apart; the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body[:10])
    await writer.drain()
    await asyncio.sleep(pause)
    writer.write(body[10:])
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    return answer


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_a_stop_signal_answers_the_requests_in_flight_on_both_services(
    tmp_path: Path, sig: signal.Signals
) -> None:
    dev = EmbeddedDev(tmp_path)
    process = dev.process().start()
    try:
        process.wait_healthy(timeout=30)
        async with httpx.AsyncClient(timeout=10) as client:
            product = await create_product(client, dev.product_url, "Ordered", 1, 10)
        order = orjson.dumps({"product_id": product["id"], "total_price": 1})
        # Two slow requests on each service: products created, orders placed.
        slow = [
            (dev.product_port, "/products", PRODUCT),
            (dev.order_port, "/orders", order),
            (dev.product_port, "/products", PRODUCT),
            (dev.order_port, "/orders", order),
        ]
        pending = [
            asyncio.create_task(_slow_post(port, path, body, 1.5)) for port, path, body in slow
        ]
        await asyncio.sleep(0.5)  # their headers are in: they are in flight
        assert process.process is not None
        process.process.send_signal(sig)
        answers = await asyncio.gather(*pending)
        code = await asyncio.to_thread(process.process.wait, 20)
    finally:
        process.stop()
    statuses = [
        (f"POST {path} on port {port}", answer.split(b"\r\n", 1)[0].decode())
        for (port, path, _), answer in zip(slow, answers, strict=True)
    ]
    assert all(status == "HTTP/1.1 201 Created" for _, status in statuses), (statuses, answers)
    assert code == 0, process.tail()

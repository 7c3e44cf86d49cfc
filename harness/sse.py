"""A Server-Sent Events client for the order-status streams, and their latency.

``python -m harness.sse --order-url URL [--post-url URL] [--orders 200] [--token T]``
opens ``GET /orders/events`` on ``--order-url``, creates a product, then places
``--orders`` orders one after another on ``--post-url`` (default: the same replica) and
prints, for each order, the time from its ``POST /orders`` answer (its pending row and its
event were committed before the answer) to its ``pending`` event on the stream: the
latency from commit to event, as a client sees it, at most. Also the time from the pending
event to the ``confirmed`` one (the settle, seen through the stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class SseEvent:
    id: int | None
    event: str
    data: dict[str, Any]
    received: float = field(default=0.0, compare=False)  # time.perf_counter()


async def events(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SseEvent | None]:
    """The events of the stream at ``url`` as they arrive; None for each comment (a
    heartbeat). Raises AssertionError unless it answers 200 text/event-stream."""
    async with client.stream("GET", url, headers=headers or {}, timeout=None) as answer:
        assert answer.status_code == 200, (answer.status_code, await answer.aread())
        assert answer.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in answer.aiter_lines():
            if line.startswith(":"):
                yield None
            elif line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            elif "data" in fields:
                yield SseEvent(
                    int(fields["id"]) if "id" in fields else None,
                    fields.get("event", "message"),
                    json.loads(fields["data"]),
                    time.perf_counter(),
                )
                fields = {}
            else:
                fields = {}  # a retry: field alone


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def measure(
    order_url: str, post_url: str, product_url: str, orders: int, token: str | None = None
) -> dict[str, float]:
    """Place ``orders`` orders one at a time on ``post_url`` while a stream of every order
    is open on ``order_url``; the figures in milliseconds (module docstring)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        product = await client.post(
            f"{product_url}/products", json={"name": "sse-latency", "price": 1, "qty": orders * 2}
        )
        assert product.status_code == 201, product.text
        product_id = product.json()["id"]
        answered: dict[int, float] = {}
        pending: dict[int, float] = {}
        confirmed: dict[int, float] = {}
        opened = asyncio.Event()

        async def listen() -> None:
            async for event in events(client, f"{order_url}/orders/events"):
                if event is None:
                    continue
                if not opened.is_set():
                    opened.set()
                order_id, status = event.data["id"], event.data["status"]
                (pending if status == "pending" else confirmed)[order_id] = event.received
                if len(confirmed) >= orders and set(confirmed) >= set(answered):
                    return

        listening = asyncio.create_task(listen())
        await asyncio.sleep(0.5)  # the stream open (its reader started)
        for _ in range(orders):
            placed = await client.post(f"{post_url}/orders", json={"product_id": product_id})
            while placed.status_code == 503:  # shed (orders settling late): as told, later
                await asyncio.sleep(float(placed.headers.get("retry-after", 1)))
                placed = await client.post(f"{post_url}/orders", json={"product_id": product_id})
            assert placed.status_code == 201, placed.text
            answered[placed.json()["id"]] = time.perf_counter()
        await asyncio.wait_for(listening, 30)
    to_event = [max(0.0, pending[i] - t) * 1000 for i, t in answered.items()]
    to_settled = [(confirmed[i] - pending[i]) * 1000 for i in answered]
    return {
        "orders": orders,
        "commit_to_event_p50_ms": statistics.median(to_event),
        "commit_to_event_p99_ms": percentile(to_event, 0.99),
        "commit_to_event_max_ms": max(to_event),
        "pending_to_confirmed_event_p50_ms": statistics.median(to_settled),
        "pending_to_confirmed_event_p99_ms": percentile(to_settled, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order-url", default="http://127.0.0.1:8080")
    parser.add_argument("--post-url", help="where orders are placed (default: --order-url)")
    parser.add_argument("--product-url", default="http://127.0.0.1:3000")
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--token", help="a staff token, when authentication is on")
    args = parser.parse_args()
    figures = asyncio.run(
        measure(
            args.order_url,
            args.post_url or args.order_url,
            args.product_url,
            args.orders,
            args.token,
        )
    )
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}))


if __name__ == "__main__":
    main()

"""Open-loop order load: orders are scheduled at a constant rate whether or not earlier
ones answered, and each answer's latency is measured from its scheduled send time, so a
slow system cannot hide its slowness by slowing the client down.

The generator shares the machine with what it measures, so it must be cheap: a lean
keep-alive pool (harness/http_pool.py, about a fifth of aiohttp's CPU per request), each
request's bytes built once, one task per scheduled request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from harness.http_pool import HttpPool

NO_ID = "201 without id"  # a 201 whose body has no integer ``id`` (the seed's load test checks)


@dataclass
class LoadResult:
    accepted: list[int] = field(default_factory=list)  # ids of the orders that got a 201
    accept_latencies: list[float] = field(default_factory=list)  # seconds, from schedule
    rejected: Counter[str] = field(default_factory=Counter)  # status code or error name
    # Seconds from schedule to every answer that came, whatever its status (a refusal too):
    # what a client waited; a timeout or a connection error is no answer.
    answer_latencies: list[float] = field(default_factory=list)
    sent: int = 0


async def drive_orders(
    order_urls: Sequence[str],
    product_ids: Sequence[int],
    *,
    count: int,
    rate: float,
    rng: random.Random,
    connections: int = 256,
    timeout: float = 10.0,
    progress: Callable[[LoadResult], None] | None = None,
    camel_case: bool = False,
    max_quantity: int = 1,
    on_accepted: Callable[[str, int, int], None] | None = None,
) -> LoadResult:
    """Post ``count`` orders at ``rate`` per second; ``camel_case`` spells the bodies as the
    seed's Go service and load test do (``productId``, ``totalPrice``). With
    ``max_quantity`` above 1 each order asks for 1 to that many units (drawn from ``rng``);
    ``on_accepted(url, order_id, quantity)`` is called on each 201, as it comes."""
    result = LoadResult()
    names = ("productId", "totalPrice") if camel_case else ("product_id", "total_price")
    bodies = {
        (p, q): orjson.dumps(
            {names[0]: p, names[1]: 10} | ({"quantity": q} if max_quantity > 1 else {})
        )
        for p in set(product_ids)
        for q in range(1, max_quantity + 1)
    }
    requests = {
        (url, p, q): HttpPool.request_bytes("POST", f"{url}/orders", body, "application/json")
        for url in order_urls
        for (p, q), body in bodies.items()
    }
    addresses = {url: HttpPool.address(url) for url in order_urls}
    pool = HttpPool(connections)

    async def post(url: str, product_id: int, quantity: int) -> tuple[int, bytes]:
        return await pool.send(addresses[url], requests[url, product_id, quantity])

    async def one(due: float, url: str, product_id: int, quantity: int) -> None:
        try:
            async with asyncio.timeout(timeout):
                try:
                    status, body = await post(url, product_id, quantity)
                except ConnectionRefusedError:
                    # What a load balancer does with a dead replica: try another one.
                    url = rng.choice([u for u in order_urls if u != url] or [url])
                    status, body = await post(url, product_id, quantity)
        except (OSError, TimeoutError) as exc:
            result.rejected[type(exc).__name__] += 1
            return
        result.answer_latencies.append(time.monotonic() - due)
        if status == 201:
            order_id = _order_id(body)
            if order_id is None:
                result.rejected[NO_ID] += 1
                return
            result.accepted.append(order_id)
            result.accept_latencies.append(time.monotonic() - due)
            if on_accepted is not None:
                on_accepted(url, order_id, quantity)
        else:
            result.rejected[str(status)] += 1

    try:
        in_flight: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            quantity = rng.randint(1, max_quantity) if max_quantity > 1 else 1
            task = asyncio.create_task(
                one(due, order_urls[i % len(order_urls)], rng.choice(product_ids), quantity)
            )
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            result.sent += 1
            if progress is not None and i % max(1, int(rate)) == 0:
                progress(result)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        pool.close()
    return result


def _order_id(body: bytes) -> int | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    order_id = doc.get("id") if isinstance(doc, dict) else None
    return order_id if isinstance(order_id, int) and not isinstance(order_id, bool) else None

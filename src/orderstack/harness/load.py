"""Open-loop order load: orders are scheduled at a constant rate whether or not earlier
ones answered, and each answer's latency is measured from its scheduled send time, so a
slow system cannot hide its slowness by slowing the client down.

Workers each own a small HTTP client: one shared pool with thousands of waiting requests
costs the generator more CPU than the services it measures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadResult:
    accepted: list[int] = field(default_factory=list)  # ids of the orders that got a 201
    accept_latencies: list[float] = field(default_factory=list)  # seconds, from schedule
    rejected: Counter[str] = field(default_factory=Counter)  # status code or error name
    sent: int = 0


async def drive_orders(
    order_urls: Sequence[str],
    product_ids: Sequence[int],
    *,
    count: int,
    rate: float,
    rng: random.Random,
    workers: int = 64,
    timeout: float = 10.0,
    progress: Callable[[LoadResult], None] | None = None,
) -> LoadResult:
    result = LoadResult()
    schedule: asyncio.Queue[tuple[float, str, int] | None] = asyncio.Queue()

    async def worker() -> None:
        # Plain HTTP on loopback: skip building a TLS context per client (~50 ms of CPU each).
        async with httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=4),
            verify=False,  # noqa: S501
        ) as client:
            while (item := await schedule.get()) is not None:
                due, url, product_id = item
                try:
                    response = await _post(client, url, product_id)
                except httpx.ConnectError:
                    # What a load balancer does with a dead replica: try another one.
                    others = [u for u in order_urls if u != url] or [url]
                    try:
                        response = await _post(client, rng.choice(others), product_id)
                    except httpx.HTTPError as exc:
                        result.rejected[type(exc).__name__] += 1
                        continue
                except httpx.HTTPError as exc:
                    result.rejected[type(exc).__name__] += 1
                    continue
                if response.status_code == 201:
                    result.accepted.append(response.json()["id"])
                    result.accept_latencies.append(time.monotonic() - due)
                else:
                    result.rejected[str(response.status_code)] += 1

    pool = [asyncio.create_task(worker()) for _ in range(workers)]
    start = time.monotonic()
    for i in range(count):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        schedule.put_nowait((due, order_urls[i % len(order_urls)], rng.choice(product_ids)))
        result.sent += 1
        if progress is not None and i % max(1, int(rate)) == 0:
            progress(result)
    for _ in pool:
        schedule.put_nowait(None)
    await asyncio.gather(*pool)
    return result


async def _post(client: httpx.AsyncClient, url: str, product_id: int) -> httpx.Response:
    return await client.post(f"{url}/orders", json={"product_id": product_id, "total_price": 10})

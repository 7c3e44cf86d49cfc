"""The embedded default keeps every accepted order across Ctrl-C and kill -9.

`orderstack dev` is started on a fresh working directory, orders are posted at it from
many clients at once, and the process is stopped in the middle of the flow: by SIGINT
(Ctrl-C), SIGTERM, or SIGKILL. Started again on the same files, every order that was
answered 201 must leave `pending`, and the product's stock must match the confirmations.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from harness.invariants import stock_violations
from harness.processes import EmbeddedDev

from .workflows import create_product

pytestmark = pytest.mark.e2e

STOCK = 100_000
CLIENTS = 16


def _dev(workdir: Path) -> EmbeddedDev:
    # The sweeper would heal a lost message after this long: keep it out of the way, so
    # that what is checked here is that nothing was lost in the first place.
    return EmbeddedDev(workdir, {"ORDER_PENDING_RESEND_SECONDS": "3600"})


async def _post_orders(
    order_url: str, product_id: int, accepted: list[int], stop: asyncio.Event
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            try:
                response = await client.post(
                    f"{order_url}/orders", json={"product_id": product_id, "total_price": 1}
                )
            except httpx.HTTPError:
                return  # the process is gone
            if response.status_code == 201:
                accepted.append(response.json()["id"])


async def _settled(client: httpx.AsyncClient, order_url: str, ids: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for order_id in ids:
        response = await client.get(f"{order_url}/orders/{order_id}")
        assert response.status_code == 200, f"order {order_id} lost: {response.text}"
        status = response.json()["status"]
        counts[status] = counts.get(status, 0) + 1
    return counts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=str)
async def test_every_accepted_order_settles_after_the_process_is_stopped_mid_flow(
    tmp_path: Path, sig: signal.Signals
) -> None:
    site = _dev(tmp_path)
    order_url, product_url = site.order_url, site.product_url
    dev = site.process().start()
    try:
        dev.wait_healthy()
        async with httpx.AsyncClient(timeout=10) as client:
            product = await create_product(client, product_url, "Durable", 1, STOCK)
        accepted: list[int] = []
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(_post_orders(order_url, product["id"], accepted, stop))
            for _ in range(CLIENTS)
        ]
        deadline = time.monotonic() + 20
        while len(accepted) < 300 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a count
            await asyncio.sleep(0.05)
        await asyncio.to_thread(dev.kill, sig)  # orders are still flowing
        stop.set()
        await asyncio.gather(*clients)
        assert len(accepted) >= 300, dev.tail()

        dev = site.process().start()
        dev.wait_healthy()
        async with httpx.AsyncClient(timeout=10) as client:
            deadline = time.monotonic() + 20
            while True:
                counts = await _settled(client, order_url, accepted)
                if "pending" not in counts or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
    finally:
        dev.stop()

    assert counts == {"confirmed": len(accepted)}, dev.tail()
    # From the files, with every process stopped: units taken = units of the confirmed orders
    # exactly (also those whose 201 the client never read: the kill cut the connection), so a
    # unit taken twice or a confirmation without its unit fails; the ledger agrees.
    database_url = site.process().env["DATABASE_URL"]
    assert await stock_violations(database_url, {product["id"]: STOCK}, accepted) == []

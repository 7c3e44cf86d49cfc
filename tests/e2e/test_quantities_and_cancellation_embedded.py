"""Quantities and cancellations on the embedded default (`orderstack dev`: SQLite, the
durable local bus), including cancels whose events wait across a kill -9 of the process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from harness.invariants import ledger_violations, settlement, unconsumed_events
from harness.processes import EmbeddedDev

from .cancel_workflows import (
    cancel_at_the_stock_limit_flow,
    cancel_confirmed_flow,
    cancel_pending_flow,
    failed_order_cannot_be_cancelled,
    place,
    quantity_flow,
    stock,
    wait_status,
    wait_stock,
)
from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e


def _database_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'orderstack.db'}"


async def _quiet(database_url: str, product_url: str, product_id: int) -> None:
    """Every event sent and consumed: none unsent in either outbox, none in an outbox that
    the other service has not let in (its inbox), polled with a deadline. ``product_url``
    and ``product_id`` name what the caller is waiting on, for the failure's message."""
    deadline = time.monotonic() + 20
    while True:
        unsent = (await settlement(database_url, None)).unsent_events
        unconsumed = await unconsumed_events(database_url)
        if unsent == 0 and unconsumed == 0:
            return
        assert time.monotonic() < deadline, (
            f"not quiet after 20s (product {product_id} at {product_url}): {unsent} events "
            f"unsent, {unconsumed} not consumed"
        )
        await asyncio.sleep(0.05)


async def test_orders_of_several_units_embedded(dev: tuple[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await quantity_flow(client, *dev)


async def test_cancel_of_a_confirmed_order_restocks_once_embedded(dev: tuple[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cancel_confirmed_flow(client, *dev)


async def test_a_failed_order_cannot_be_cancelled_embedded(dev: tuple[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await failed_order_cannot_be_cancelled(client, *dev)


async def test_a_cancel_at_the_stock_limit_gives_its_units_back_embedded(
    dev: tuple[str, str],
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cancel_at_the_stock_limit_flow(client, *dev)


@pytest.fixture
def devdir(tmp_path: Path) -> Path:
    return tmp_path


async def test_cancels_wait_across_a_kill_and_settle_after_restart(devdir: Path) -> None:
    """The embedded default killed (-9) right after cancels were accepted: their events wait
    in the outbox or the local bus's file and settle after the restart; a pending order's
    cancel is followed by no stock taken, a confirmed order's by its units coming back. Then
    cancels of pending orders as they settle, the answers arriving after the cancels."""
    database_url = _database_url(devdir)
    site = EmbeddedDev(devdir, {"DATABASE_URL": database_url})
    product_url, order_url = site.product_url, site.order_url
    process = site.process().start()
    try:
        process.wait_healthy()
        async with httpx.AsyncClient(timeout=10) as client:
            product = await create_product(client, product_url, "Killed", 5, 8)
            confirmed = await place(client, order_url, product["id"], 3)
            assert (await wait_terminal(client, order_url, confirmed["id"]))["status"] == (
                "confirmed"
            )
            pending = await place(client, order_url, product["id"], 4)
            for order in (pending, confirmed):
                answer = await client.post(f"{order_url}/orders/{order['id']}/cancel")
                assert answer.json()["status"] == "cancelled"
            process.kill()

            process.start()
            process.wait_healthy()
            await wait_stock(client, product_url, product["id"], 8, timeout=30)
            await _quiet(database_url, product_url, product["id"])
            assert await stock(client, product_url, product["id"]) == 8
            for order in (pending, confirmed):
                await wait_status(client, order_url, order["id"], "cancelled")

            await cancel_pending_flow(
                client,
                product_url,
                order_url,
                lambda product_id: _quiet(database_url, product_url, product_id),
            )
        assert await ledger_violations(database_url) == []
    finally:
        process.stop()

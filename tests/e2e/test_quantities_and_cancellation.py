"""Quantities and cancellations on the real stack (separate processes, MariaDB, RabbitMQ,
Redis): orders of several units, cancels of confirmed and pending orders, an answer that
comes after the cancel, and cancels while every product replica is down."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from harness.invariants import ledger_violations, stock_violations
from harness.stack import Stack
from orderstack.messaging.envelope import Event
from orderstack.messaging.rabbitmq import RabbitMQBus
from orderstack.orders.repository import inbox as orders_inbox
from orderstack.products.repository import stock_reservations

from .cancel_workflows import (
    cancel_at_the_stock_limit_flow,
    cancel_confirmed_flow,
    cancel_pending_flow,
    failed_order_cannot_be_cancelled,
    place,
    quantity_flow,
    stock,
    wait_status,
)
from .workflows import create_product, wait_quiet, wait_terminal

pytestmark = pytest.mark.e2e


async def test_orders_of_several_units_settle_and_stock_drops_by_them(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await quantity_flow(client, stack.product_url, stack.order_url)
    assert await ledger_violations(stack.sandbox.database_url) == []


async def test_cancel_of_a_confirmed_order_restocks_exactly_once(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cancel_confirmed_flow(client, stack.product_url, stack.order_url)
    await wait_quiet(stack)
    assert await ledger_violations(stack.sandbox.database_url) == []


async def test_cancel_of_pending_orders(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cancel_pending_flow(
            client, stack.product_url, stack.order_url, lambda _: wait_quiet(stack)
        )
    assert await ledger_violations(stack.sandbox.database_url) == []


async def test_a_failed_order_cannot_be_cancelled(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await failed_order_cannot_be_cancelled(client, stack.product_url, stack.order_url)


async def test_a_cancel_at_the_stock_limit_gives_its_units_back(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cancel_at_the_stock_limit_flow(client, stack.product_url, stack.order_url)
    await wait_quiet(stack)
    assert await ledger_violations(stack.sandbox.database_url) == []


async def test_answers_arriving_after_the_cancel_change_nothing(stack: Stack) -> None:
    """order.qty_confirmed and order.qty_failed for a cancelled order, published on the
    broker as the product service would (new event ids): the order stays cancelled."""
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Late answers", 5, 4)
        order = await place(client, stack.order_url, product["id"], 2)
        assert (await wait_terminal(client, stack.order_url, order["id"]))["status"] == "confirmed"
        cancelled = await client.post(f"{stack.order_url}/orders/{order['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled"

        late = [
            Event("order.qty_confirmed", {"orderId": order["id"]}),
            Event(
                "order.qty_failed",
                {"orderId": order["id"], "reason": "product_not_found_or_unavailable"},
            ),
        ]
        bus = RabbitMQBus(stack.sandbox.amqp_url)
        await bus.start()
        try:
            await bus.publish(late)
        finally:
            await bus.close()

        async def both_handled(conn: AsyncConnection) -> bool:
            """The order service let both late answers in (and did what it does with them)."""
            seen = await conn.scalars(
                sa.select(orders_inbox.c.event_id).where(
                    orders_inbox.c.event_id.in_([event.id for event in late])
                )
            )
            return len(list(seen)) == len(late)

        await wait_quiet(stack, both_handled)

        body = (await client.get(f"{stack.order_url}/orders/{order['id']}")).json()
        assert body["status"] == "cancelled"
        assert await stock(client, stack.product_url, product["id"]) == 4
    assert await ledger_violations(stack.sandbox.database_url, [product["id"]]) == []


async def test_cancels_while_the_product_service_is_down_settle_after_it_is_back(
    stack: Stack,
) -> None:
    """Every product replica stopped: a confirmed order and a new (pending) order are
    cancelled, and their events wait in the queue. Once the replicas are back, the confirmed
    order's units come back, the pending order takes nothing, both stay cancelled."""
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Offline", 5, 6)
        confirmed = await place(client, stack.order_url, product["id"], 3)
        assert (await wait_terminal(client, stack.order_url, confirmed["id"]))[
            "status"
        ] == "confirmed"
        for process in stack.products:
            process.stop()
        try:
            # The product is in the cache: orders are still taken while its service is down.
            pending = await place(client, stack.order_url, product["id"], 2)
            for order in (confirmed, pending):
                answer = await client.post(f"{stack.order_url}/orders/{order['id']}/cancel")
                assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
            # The events wait in the queue (created + 2 cancelled); polled, not slept on: the
            # relay publishes right after each commit, but a busy machine may take a while.
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                backlog = await asyncio.to_thread(stack.sandbox.queue_backlog)
                if backlog.get("product-service.events", 0) >= 3:
                    break
                assert asyncio.get_running_loop().time() < deadline, (
                    f"3 events not waiting in product-service.events after 20s: {backlog}"
                )
                await asyncio.sleep(0.2)
        finally:
            for process in stack.products:
                process.start()
            for process in stack.products:
                process.wait_healthy()

        async def both_recorded(conn: AsyncConnection) -> bool:
            rows = await conn.execute(
                sa.select(stock_reservations.c.outcome).where(
                    stock_reservations.c.order_id.in_([confirmed["id"], pending["id"]])
                )
            )
            return [r.outcome for r in rows] == ["cancelled", "cancelled"]

        await wait_quiet(stack, both_recorded, timeout=30)
        await wait_status(client, stack.order_url, pending["id"], "cancelled")
        assert (await client.get(f"{stack.order_url}/orders/{confirmed['id']}")).json()[
            "status"
        ] == "cancelled"
        assert await stock(client, stack.product_url, product["id"]) == 6
    assert await ledger_violations(stack.sandbox.database_url, [product["id"]]) == []
    assert (
        await stock_violations(
            stack.sandbox.database_url, {product["id"]: 6}, [confirmed["id"], pending["id"]]
        )
        == []
    )

"""Holds on the real stack (separate processes, MariaDB, RabbitMQ, Redis): hold ->
reserved -> confirm, hold -> expired -> units back once, and a hold that expires while its
broker is away (for this test's vhost only: permissions cleared, connections closed;
given back in a ``finally``): it is expired on time, its units come back once the broker
is back. The harness's invariants hold with orders reserved and expired."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import sqlalchemy as sa

from harness import rabbit
from harness.invariants import (
    harness_engine,
    ledger_violations,
    line_violations,
    stock_violations,
)
from harness.stack import Stack
from orderstack.orders.repository import database_clock, orders
from orderstack.storage.types import utcnow

from .cancel_workflows import stock, wait_status, wait_stock
from .holds_workflows import hold_flow, place_held
from .workflows import create_product, wait_quiet

pytestmark = pytest.mark.e2e


async def _end_hold(stack: Stack, order_id: int) -> None:
    engine = harness_engine(stack.sandbox.database_url)
    try:
        async with engine.begin() as conn:
            now = await conn.scalar(sa.select(database_clock(conn, utcnow())))
            await conn.execute(
                orders.update().where(orders.c.id == order_id).values(expires_at=now)
            )
    finally:
        await engine.dispose()


async def test_holds_confirm_expire_and_cancel(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product_id, orders = await hold_flow(client, stack.product_url, stack.order_url)
    await wait_quiet(stack)
    url = stack.sandbox.database_url
    assert await stock_violations(url, {product_id: 20}, orders) == []
    assert await line_violations(url, orders) == []
    assert await ledger_violations(url) == []


async def test_a_hold_expires_while_the_broker_is_away_and_its_units_come_back(
    stack: Stack,
) -> None:
    vhost, user = stack.sandbox.name, stack.sandbox.amqp_user
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Away", 10, 10)
        order = await place_held(client, stack.order_url, product["id"], 4, 60)
        await wait_status(client, stack.order_url, order["id"], "reserved")
        assert await stock(client, stack.product_url, product["id"]) == 6
        rabbit.clear_permissions(vhost, user)
        try:
            rabbit.close_connections(vhost, "test: broker away during a hold")
            # Its hold ends now (the test moves expires_at to the database's clock): expired
            # by the order service's sweep, broker or not.
            await _end_hold(stack, order["id"])
            await wait_status(client, stack.order_url, order["id"], "expired", timeout=10)
            late = await client.post(f"{stack.order_url}/orders/{order['id']}/confirm")
            assert late.status_code == 409 and late.json()["code"] == "ORDER_EXPIRED"
            # Its order.expired waits in the outbox: the units are still taken.
            await asyncio.sleep(0.5)
            assert await stock(client, stack.product_url, product["id"]) == 6
        finally:
            rabbit.set_permissions(vhost, user)
        started = time.monotonic()
        await wait_stock(client, stack.product_url, product["id"], 10, timeout=60)
        back_after = time.monotonic() - started
    await wait_quiet(stack, timeout=30)
    assert (
        await stock_violations(stack.sandbox.database_url, {product["id"]: 10}, [order["id"]]) == []
    )
    assert await ledger_violations(stack.sandbox.database_url) == []
    assert back_after < 60

"""SPEC.md's invariants, attacked end to end: concurrency, duplicates, malformed input."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from harness.invariants import harness_engine, queue_depths, stock_violations
from harness.stack import Stack
from orderstack.messaging.rabbitmq import login_user
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE
from orderstack.products.repository import inbox as products_inbox
from orderstack.products.repository import outbox as products_outbox

from .workflows import (
    concurrent_orders_never_oversell,
    create_product,
    wait_quiet,
    wait_terminal,
)

pytestmark = pytest.mark.e2e


async def _publish_raw(
    amqp_url: str, body: bytes, routing_key: str, message_id: str | None
) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                # As the order service's relay publishes: as its broker user (the stack's
                # one user), whom the product service believes (messaging/trust.py).
                user_id=login_user(amqp_url),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )
    finally:
        await connection.close()


async def test_many_concurrent_orders_on_two_product_replicas_never_oversell(stack: Stack) -> None:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await concurrent_orders_never_oversell(
            client,
            stack.product_url,
            stack.order_url,
            stack.sandbox.database_url,
            stock=40,
            demand=240,
        )


async def test_duplicated_order_created_takes_stock_once(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Dup", 3, 10)
        created = await client.post(
            f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 3}
        )
        order_id = created.json()["id"]
        assert (await wait_terminal(client, stack.order_url, order_id))["status"] == "confirmed"
        body = orjson.dumps(
            {
                "pattern": "order.created",
                "data": {
                    "orderId": order_id,
                    "productId": product["id"],
                    "totalPrice": 3,
                    "timestamp": "2025-09-20T10:30:00Z",
                },
            }
        )
        same_id, new_id = str(uuid.uuid4()), str(uuid.uuid4())
        # The same message twice, and the same order under a new message id.
        for message_id in (same_id, same_id, new_id):
            await _publish_raw(stack.sandbox.amqp_url, body, "order.created", message_id)
        # Not a fixed pause: wait until the product service has taken both message ids and
        # the system is quiet (no message ready or held by a consumer, no unsent event).
        await wait_quiet(stack, lambda conn: _in_inbox(conn, {same_id, new_id}))
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 9
        order = (await client.get(f"{stack.order_url}/orders/{order_id}")).json()
        assert order["status"] == "confirmed"
    assert await stock_violations(stack.sandbox.database_url, {product["id"]: 10}, [order_id]) == []
    # The recorded answer, sent again for the new message ids (once per id, or once for
    # both when one batch took them together), never another one; the second copy of
    # ``same_id`` did nothing.
    answers = await _answers_to(stack, order_id)
    assert set(answers) == {"order.qty_confirmed"} and 2 <= len(answers) <= 3, answers


async def _in_inbox(conn: AsyncConnection, event_ids: set[str]) -> bool:
    seen = await conn.scalars(
        sa.select(products_inbox.c.event_id).where(products_inbox.c.event_id.in_(event_ids))
    )
    return set(seen) == event_ids


async def _answers_to(stack: Stack, order_id: int) -> list[str]:
    """The product service's answers (its outbox, sent or not) about one order."""
    engine = harness_engine(stack.sandbox.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(products_outbox.c.event_type, products_outbox.c.payload)
                .where(products_outbox.c.event_type.like("order.qty_%"))
                .order_by(products_outbox.c.id)
            )
            return [t for t, payload in rows if orjson.loads(payload)["orderId"] == order_id]
    finally:
        await engine.dispose()


async def test_malformed_message_is_dead_lettered_and_the_consumer_keeps_going(
    stack: Stack,
) -> None:
    dlq = PRODUCT_SERVICE_QUEUE.dead_letter_queue
    before = (await queue_depths(stack.sandbox.amqp_url))[dlq]
    hostile = [
        b"not json at all",
        b"[1, 2, 3]",
        orjson.dumps({"pattern": "order.created", "data": {"orderId": "one", "productId": 1}}),
        orjson.dumps({"pattern": "order.created", "data": {"orderId": -5, "productId": 1}}),
        orjson.dumps({"pattern": "order.created", "data": {"productId": 1}}),
        b'{"pattern": "order.created", "data": {"orderId": %d, "productId": 1}}' % 2**70,
        b"{" + b" " * 100_000 + b"}",
        orjson.dumps({"pattern": "order.shipped", "data": {"orderId": 1, "productId": 1}}),
        orjson.dumps({"pattern": "order.created", "data": {"orderId": 1, "productId": True}}),
    ]
    for body in hostile:
        await _publish_raw(stack.sandbox.amqp_url, body, "order.created", str(uuid.uuid4()))
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "After poison", 7, 2)
        created = await client.post(
            f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 7}
        )
        assert (await wait_terminal(client, stack.order_url, created.json()["id"]))[
            "status"
        ] == "confirmed"
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 1
    for _ in range(50):
        if (await queue_depths(stack.sandbox.amqp_url))[dlq] == before + len(hostile):
            break
        await asyncio.sleep(0.1)
    assert (await queue_depths(stack.sandbox.amqp_url))[dlq] == before + len(hostile)


async def test_product_get_shows_new_stock_right_after_each_confirmation(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Fresh", 2, 5)
        for expected in (4, 3, 2):
            # Warm the cache first, so a stale entry would be served if it were not refreshed.
            for replica in stack.products:
                await client.get(f"{replica.url}/products/{product['id']}")
            created = await client.post(
                f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 2}
            )
            settled = await wait_terminal(client, stack.order_url, created.json()["id"])
            assert settled["status"] == "confirmed"
            for replica in stack.products:
                seen = (await client.get(f"{replica.url}/products/{product['id']}")).json()
                assert seen["qty"] == expected

"""SPEC.md's invariants, attacked end to end: concurrency, duplicates, malformed input."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import httpx
import orjson
import pytest

from orderstack.harness.invariants import queue_depths, stock_violations
from orderstack.harness.stack import Stack
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE

from .workflows import create_product, wait_terminal

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
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )
    finally:
        await connection.close()


async def test_many_concurrent_orders_on_two_product_replicas_never_oversell(stack: Stack) -> None:
    stock, demand = 40, 240
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        product = await create_product(client, stack.product_url, "Hot item", 10, stock)

        async def order() -> int:
            response = await client.post(
                f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 10}
            )
            assert response.status_code == 201, response.text
            order_id: int = response.json()["id"]
            return order_id

        order_ids = await asyncio.gather(*(order() for _ in range(demand)))
        settled = await asyncio.gather(
            *(wait_terminal(client, stack.order_url, i, timeout=60) for i in order_ids)
        )
        statuses = [o["status"] for o in settled]
        assert statuses.count("confirmed") == stock
        assert statuses.count("failed") == demand - stock
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 0
    assert (
        await stock_violations(stack.sandbox.database_url, {product["id"]: stock}, order_ids) == []
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
        same_id = str(uuid.uuid4())
        # The same message twice, and the same order under a new message id.
        for message_id in (same_id, same_id, str(uuid.uuid4())):
            await _publish_raw(stack.sandbox.amqp_url, body, "order.created", message_id)
        await asyncio.sleep(1.5)
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 9
        order = (await client.get(f"{stack.order_url}/orders/{order_id}")).json()
        assert order["status"] == "confirmed"
    assert await stock_violations(stack.sandbox.database_url, {product["id"]: 10}, [order_id]) == []


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

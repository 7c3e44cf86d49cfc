"""The seed's own clients, unchanged, against both services as separate processes on the
real servers: its Go service's and load test's camelCase order bodies over HTTP, and the
exact messages its Go publisher and NestJS service put on RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import aio_pika
import httpx
import orjson
import pytest

from harness.invariants import queue_depths, settlement
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE

from .conftest import UNHURRIED
from .workflows import create_product, post_order_retrying, wait_terminal

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    make_sandbox: Callable[..., Sandbox], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The e2e stack as it runs beside the seed's services: the seed's publishers set no
    AMQP ``user_id``, so their events are believed without one (BROKER_USER_ID_CHECK=
    when_present; one naming another user is still dead-lettered: docs/security.md)."""
    env = {**UNHURRIED, "BROKER_USER_ID_CHECK": "when_present"}
    running = Stack(
        make_sandbox("e2e"), tmp_path_factory.mktemp("logs"), product_replicas=2, extra_env=env
    ).start()
    try:
        running.wait_ready(timeout=30)
        yield running
    finally:
        running.stop()


async def test_camel_case_and_snake_case_orders_both_settle(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Both spellings", 100000, 5)
        camel = await client.post(
            f"{stack.order_url}/orders", json={"productId": product["id"], "totalPrice": 100000}
        )
        snake = await client.post(
            f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 100000}
        )
        for response in (camel, snake):
            assert response.status_code == 201, response.text
            assert response.json()["product_id"] == product["id"]  # answers stay snake_case
            assert "productId" not in response.json()
        settled = [
            await wait_terminal(client, stack.order_url, r.json()["id"]) for r in (camel, snake)
        ]
        assert [o["status"] for o in settled] == ["confirmed", "confirmed"]
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 3


async def _publish(amqp_url: str, routing_key: str, body: bytes) -> None:
    """As the seed's services publish: JSON body, persistent, no message_id, no type."""
    connection = await aio_pika.connect(amqp_url, timeout=5)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await exchange.publish(message, routing_key=routing_key)
    finally:
        await connection.close()


async def _purge_product_queue_once_it_holds(stack: Stack, count: int) -> None:
    """Wait until the order service has relayed its own ``order.created`` events, then drop
    them, so only the seed-shaped messages published next can take stock."""
    deadline = time.monotonic() + 30
    while True:
        state = await settlement(stack.sandbox.database_url, stack.sandbox.amqp_url)
        if state.unsent_events == 0 and state.queue_depths[PRODUCT_SERVICE_QUEUE.name] == count:
            break
        assert time.monotonic() < deadline, f"events not relayed: {state}"
        await asyncio.sleep(0.1)
    connection = await aio_pika.connect(stack.sandbox.amqp_url, timeout=5)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(PRODUCT_SERVICE_QUEUE.name, passive=True)
        await queue.purge()
    finally:
        await connection.close()


async def test_seed_wire_payloads_are_consumed_and_settle_orders(stack: Stack) -> None:
    """The product replicas are stopped, so that no answer but the seed-shaped ones can
    settle the orders placed meanwhile (the product is cached: orders are still taken)."""
    amqp = stack.sandbox.amqp_url
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Seed wire", 2999.99, 10)
        assert (await client.get(f"{stack.product_url}/products/{product['id']}")).is_success
        for replica in stack.products:
            replica.stop()
        try:
            ids = []
            for n in range(4):
                # The order service knows the product from the cache alone now: a cache
                # read past its 0.25 s timeout on a busy machine is a 503 by design (the
                # product service cannot be asked), asked again as a client would.
                response = await post_order_retrying(
                    client,
                    stack.order_url,
                    {"productId": product["id"], "totalPrice": 2999.99},
                    key=f"seed-wire-{product['id']}-{n}",
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            confirmed, failed, by_go_envelope, by_go_bare = ids
            await _purge_product_queue_once_it_holds(stack, len(ids))

            # The NestJS product service's answers, exactly as it emits them.
            await _publish(
                amqp,
                "order.qty_confirmed",
                orjson.dumps({"pattern": "order.qty_confirmed", "data": {"orderId": confirmed}}),
            )
            await _publish(
                amqp,
                "order.qty_failed",
                orjson.dumps(
                    {
                        "pattern": "order.qty_failed",
                        "data": {"orderId": failed, "timestamp": "2025-09-20T10:30:00Z"},
                    }
                ),
            )
            assert (await wait_terminal(client, stack.order_url, confirmed))[
                "status"
            ] == "confirmed"
            assert (await wait_terminal(client, stack.order_url, failed))["status"] == "failed"

            # The Go order service's order.created: createdAt, not timestamp; in the NestJS
            # envelope its product service listens for, and bare.
            def go_order_created(order_id: int) -> dict[str, object]:
                return {
                    "orderId": order_id,
                    "productId": product["id"],
                    "totalPrice": 2999.99,
                    "createdAt": "2025-09-20T10:30:00.123456789Z",
                }

            await _publish(
                amqp,
                "order.created",
                orjson.dumps(
                    {"pattern": "order.created", "data": go_order_created(by_go_envelope)}
                ),
            )
            await _publish(amqp, "order.created", orjson.dumps(go_order_created(by_go_bare)))
        finally:
            for replica in stack.products:
                replica.start()
            for replica in stack.products:
                replica.wait_healthy()

        for order_id in (by_go_envelope, by_go_bare):
            settled = await wait_terminal(client, stack.order_url, order_id, timeout=30)
            assert settled["status"] == "confirmed"
        # Only the two seed-shaped order.created took stock: the order service's own events
        # for these orders were dropped, and the answered orders took none.
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 8
    depths = await queue_depths(amqp)
    assert {name: n for name, n in depths.items() if name.endswith(".dlq")} == {
        "order-service.events.dlq": 0,
        "product-service.events.dlq": 0,
    }

"""The RabbitMQ bus's consumer takes aiormq's deliveries as they come
(``_RawConsumingQueue``), not aio-pika's ``IncomingMessage``: what a delivery carries, and
the subscription restored after the broker closed the connection, as aio-pika's robust
queue restores its own."""

from __future__ import annotations

import asyncio

import pytest

from harness import rabbit
from harness.sandbox import Sandbox
from orderstack.messaging.bus import Delivery
from orderstack.messaging.envelope import Event
from orderstack.messaging.rabbitmq import _AmqpDelivery
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from tests.integration.amqp import started_bus, take_all, until

pytestmark = pytest.mark.integration


async def test_a_delivery_carries_the_message_as_published(sandbox: Sandbox) -> None:
    async with started_bus(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name) as bus:
        got: list[Delivery] = []

        async def hold(delivery: Delivery) -> None:
            got.append(delivery)

        await bus.consume(PRODUCT_SERVICE_QUEUE, hold, prefetch=10)
        with_origin = Event("order.created", {"orderId": 1}, request_id="req-1")
        bare = Event("order.created", {"orderId": 2})
        await bus.publish([with_origin, bare])

        async def both() -> bool:
            return len(got) == 2

        await until(both)
        first, second = got
        assert isinstance(first, _AmqpDelivery) and isinstance(second, _AmqpDelivery)
        assert (first.message_id, first.routing_key, first.user_id) == (
            with_origin.id,
            "order.created",
            "guest",
        )
        assert first.body == b'{"pattern":"order.created","data":{"orderId":1}}'
        assert first.content_type == "application/json"
        assert (first.headers or {})["x-request-id"] == "req-1"
        assert "x-request-id" not in (second.headers or {})
        assert first.tag is not None and second.tag == first.tag + 1
        await bus.ack_all(got)
    assert await take_all(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name) == []


async def test_the_subscription_is_restored_after_the_broker_closed_the_connection(
    sandbox: Sandbox,
) -> None:
    async with started_bus(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name) as bus:
        got: list[Delivery] = []

        async def take(delivery: Delivery) -> None:
            got.append(delivery)
            await bus.ack_all([delivery])

        await bus.consume(PRODUCT_SERVICE_QUEUE, take, prefetch=10)
        before = Event("order.created", {"orderId": 1})
        await bus.publish([before])

        async def arrived(n: int) -> bool:
            return len(got) >= n

        await until(lambda: arrived(1))

        async def closed() -> bool:  # the management API lists a connection a moment late
            return await asyncio.to_thread(rabbit.close_connections, sandbox.name, "test") > 0

        await until(closed, timeout=30)

        after = Event("order.created", {"orderId": 2})

        async def published() -> bool:  # once the robust connection is back
            try:
                await bus.publish([after])
            except Exception:
                return False
            return True

        await until(published, timeout=30)
        await until(lambda: arrived(2), timeout=30)
        assert [d.message_id for d in got] == [before.id, after.id]

"""Several events in one message (EVENT_BATCH_SIZE above 1) on the real broker: what goes on
the wire, and the consumer taking each event as a message of its own (claimed, applied,
acked, dead-lettered one by one). By default every event is a message of its own, as the
seed's consumers read them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import aio_pika
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.invariants import queue_depths
from harness.sandbox import Sandbox
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.envelope import BATCH_CONTENT_TYPE, Event, encode
from orderstack.messaging.rabbitmq import REASON_HEADER, RabbitMQBus
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.repository import ProductUnitOfWork, stock_reservations
from orderstack.products.service import ProductService

from .amqp import take_all, until

pytestmark = [pytest.mark.integration, pytest.mark.databases("mariadb")]

QUEUE = PRODUCT_SERVICE_QUEUE.name
DLQ = PRODUCT_SERVICE_QUEUE.dead_letter_queue


@pytest.fixture
async def emptied(sandbox: Sandbox) -> AsyncIterator[str]:
    """The sandbox's AMQP URL, with the product service's queue and its DLQ empty."""
    bus = RabbitMQBus(sandbox.amqp_url)
    await bus.start()
    await bus.close()
    await take_all(sandbox.amqp_url, QUEUE)
    await take_all(sandbox.amqp_url, DLQ)
    yield sandbox.amqp_url


def _created(order_id: int, product_id: int = 1) -> Event:
    data = {"orderId": order_id, "productId": product_id, "quantity": 1, "totalPrice": "10.00"}
    return Event("order.created", data, request_id=f"req-{order_id}")


def _cancelled(order_id: int, product_id: int = 1) -> Event:
    return Event("order.cancelled", {"orderId": order_id, "productId": product_id, "quantity": 1})


async def _publish(amqp_url: str, events: list[Event], batch_events: int) -> None:
    bus = RabbitMQBus(amqp_url, batch_events=batch_events)
    await bus.start()
    try:
        await bus.publish(events)
    finally:
        await bus.close()


async def test_by_default_each_event_is_a_message_of_its_own(emptied: str) -> None:
    """The seed's wire: a consumer bound to order.created gets one event per message."""
    events = [_created(1), _created(2), _cancelled(1), _created(3)]
    await _publish(emptied, events, batch_events=1)

    messages = await take_all(emptied, QUEUE)

    assert [(m.message_id, m.routing_key, m.body) for m in messages] == [
        (e.id, e.name, encode(e)) for e in events
    ]
    assert {m.content_type for m in messages} == {"application/json"}
    assert messages[0].headers["x-request-id"] == "req-1"


async def test_consecutive_events_of_one_name_share_a_message_in_order(emptied: str) -> None:
    events = [_created(1), _created(2), _created(3), _cancelled(1), _cancelled(2), _created(4)]
    await _publish(emptied, events, batch_events=2)

    messages = await take_all(emptied, QUEUE)

    # Runs of one name, at most two each; a run never passes another (one queue's order).
    assert [(m.routing_key, m.content_type) for m in messages] == [
        ("order.created", BATCH_CONTENT_TYPE),
        ("order.created", "application/json"),  # the third of the run: an event alone
        ("order.cancelled", BATCH_CONTENT_TYPE),
        ("order.created", "application/json"),
    ]
    first = orjson.loads(messages[0].body)
    assert first == {
        "pattern": "order.created",
        "batch": [
            {"id": events[0].id, "data": events[0].data, "x-request-id": "req-1"},
            {"id": events[1].id, "data": events[1].data, "x-request-id": "req-2"},
        ],
    }
    assert messages[1].message_id == events[2].id
    assert messages[1].body == encode(events[2])


Consumer = EventConsumer[ProductUnitOfWork, object]


@pytest.fixture
async def consumer(engine: AsyncEngine, emptied: str) -> AsyncIterator[tuple[Consumer, int]]:
    """The product service's real consumer on the sandbox, and a product of 100 units."""
    bus = RabbitMQBus(emptied)
    await bus.start()
    service = ProductService(lambda: ProductUnitOfWork(engine, None), InProcessProductCache())
    product = await service.create_product("batched", Decimal(10), 100)
    consumer: Consumer = EventConsumer(
        bus,
        PRODUCT_SERVICE_QUEUE,
        lambda: ProductUnitOfWork(engine, None),
        OrderStockHandler(service),
    )
    await consumer.start()
    yield consumer, product.id
    await consumer.stop()
    await bus.close()


async def _reservations(engine: AsyncEngine, product_id: int) -> dict[int, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(stock_reservations.c.order_id, stock_reservations.c.outcome).where(
                stock_reservations.c.product_id == product_id
            )
        )
        return {row.order_id: row.outcome for row in rows}


async def test_the_consumer_takes_a_batchs_events_one_by_one_and_dead_letters_only_the_bad(
    engine: AsyncEngine, emptied: str, consumer: tuple[Consumer, int]
) -> None:
    consuming, product_id = consumer
    first = 1000 * product_id  # order ids of this product's own
    bad = Event("order.created", {"orderId": "not a number"})
    events = [_created(first, product_id), bad]
    events += [_created(first + 1, product_id), _created(first + 2, product_id)]
    taken = {first: "confirmed", first + 1: "confirmed", first + 2: "confirmed"}
    await _publish(emptied, events, batch_events=100)

    async def settled() -> bool:
        counts = consuming.settled
        return counts[("order.created", "applied")] + counts[
            ("order.created", "dead_lettered")
        ] == len(events)

    await until(settled)

    assert await _reservations(engine, product_id) == taken
    # The bad event alone, as the message of its own it would have been, says why.
    [letter] = await take_all(emptied, DLQ)
    assert (letter.message_id, letter.body) == (bad.id, encode(bad))
    assert "invalid order.created" in letter.headers[REASON_HEADER]
    # The batch message was acked once each of its events was settled.
    await until(lambda: _depth(emptied, QUEUE, 0))

    # The same batch again (a redelivery, a relay's second round): every good event is in
    # the inbox, nothing is taken twice.
    await _publish(emptied, events, batch_events=100)

    async def twice() -> bool:
        return consuming.settled[("order.created", "duplicate")] == 3

    await until(twice)
    assert await _reservations(engine, product_id) == taken
    await until(lambda: _depth(emptied, QUEUE, 0))


async def test_a_body_that_is_no_batch_is_dead_lettered_whole(
    emptied: str, consumer: tuple[Consumer, int]
) -> None:
    connection = await aio_pika.connect(emptied)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(
            aio_pika.Message(b"not json", message_id="b-1", content_type=BATCH_CONTENT_TYPE),
            routing_key="order.created",
        )
    finally:
        await connection.close()

    await until(lambda: _depth(emptied, DLQ, 1))
    [letter] = await take_all(emptied, DLQ)
    assert (letter.message_id, letter.body) == ("b-1", b"not json")
    assert letter.headers[REASON_HEADER] == "body is not JSON"


async def _depth(amqp_url: str, queue: str, expected: int) -> bool:
    return (await queue_depths(amqp_url))[queue] == expected

"""The in-process bus (embedded default) keeps the broker's semantics the consumer relies on."""

from __future__ import annotations

import asyncio

import pytest

from orderstack.messaging.bus import Delivery, PublishError
from orderstack.messaging.envelope import Event, decode
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import ALL_QUEUES, ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE


@pytest.fixture
async def bus() -> InProcessBus:
    bus = InProcessBus()
    await bus.start()
    return bus


async def collect(bus: InProcessBus, queue_name: str, count: int) -> list[Delivery]:
    queue = ORDER_SERVICE_QUEUE if queue_name == ORDER_SERVICE_QUEUE.name else PRODUCT_SERVICE_QUEUE
    received: list[Delivery] = []
    done = asyncio.Event()

    async def on_delivery(delivery: Delivery) -> None:
        received.append(delivery)
        if len(received) == count:
            done.set()

    await bus.consume(queue, on_delivery, prefetch=10)
    async with asyncio.timeout(2):
        await done.wait()
    return received


async def test_events_are_routed_to_the_queue_bound_to_their_name(bus: InProcessBus) -> None:
    await bus.publish(
        [
            Event("order.created", {"orderId": 1, "productId": 2}),
            Event("order.qty_confirmed", {"orderId": 1}),
            Event("product_created", {"id": 2}),
        ]
    )

    assert bus.depth(PRODUCT_SERVICE_QUEUE.name) == 1
    assert bus.depth(ORDER_SERVICE_QUEUE.name) == 1  # product_created is bound to no queue
    await bus.close()


async def test_delivery_carries_the_encoded_event_and_its_id(bus: InProcessBus) -> None:
    event = Event("order.created", {"orderId": 1, "productId": 2})
    await bus.publish([event])

    [delivery] = await collect(bus, PRODUCT_SERVICE_QUEUE.name, 1)
    await bus.close()

    assert (delivery.message_id, delivery.routing_key) == (event.id, "order.created")
    assert decode(delivery.body, message_id=delivery.message_id, routing_key=None) == event


async def test_product_created_is_dropped_without_error(bus: InProcessBus) -> None:
    # No queue is bound to product_created: it is a broadcast nobody hears, not a failure.
    await bus.publish([Event("product_created", {"id": 2, "name": "Phone"})])

    assert {spec.name: bus.depth(spec.name) for spec in ALL_QUEUES} == {
        spec.name: 0 for spec in ALL_QUEUES
    }

    received: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        received.append(delivery)
        await delivery.ack()

    for spec in ALL_QUEUES:
        await bus.consume(spec, record, prefetch=10)
    await asyncio.sleep(0.02)
    await bus.close()

    assert received == []
    assert all(letters == [] for letters in bus.dead_letters.values())


async def test_a_dropped_event_does_not_hold_back_the_rest_of_its_batch(
    bus: InProcessBus,
) -> None:
    answer = Event("order.qty_confirmed", {"orderId": 1})
    await bus.publish([Event("product_created", {"id": 2}), answer])

    [delivery] = await collect(bus, ORDER_SERVICE_QUEUE.name, 1)
    await bus.close()

    assert delivery.message_id == answer.id
    assert bus.depth(PRODUCT_SERVICE_QUEUE.name) == 0


async def test_publishing_before_start_is_a_publish_error() -> None:
    with pytest.raises(PublishError):
        await InProcessBus().publish([Event("order.created", {})])


async def test_dead_lettered_message_lands_in_the_dead_letter_list(bus: InProcessBus) -> None:
    await bus.publish_raw(PRODUCT_SERVICE_QUEUE.name, b"junk", "m-1", "order.created")

    [delivery] = await collect(bus, PRODUCT_SERVICE_QUEUE.name, 1)
    await delivery.dead_letter()
    await bus.close()

    assert [m.body for m in bus.dead_letters[PRODUCT_SERVICE_QUEUE.name]] == [b"junk"]


async def test_requeued_message_is_delivered_again(bus: InProcessBus) -> None:
    await bus.publish([Event("order.qty_failed", {"orderId": 3})])

    received: list[Delivery] = []
    redelivered = asyncio.Event()

    async def requeue_first(delivery: Delivery) -> None:
        received.append(delivery)
        if len(received) == 1:
            await delivery.requeue()
        else:
            await delivery.ack()
            redelivered.set()

    await bus.consume(ORDER_SERVICE_QUEUE, requeue_first, prefetch=1)
    async with asyncio.timeout(2):
        await redelivered.wait()
    await bus.close()

    assert received[0].message_id == received[1].message_id


async def test_a_delivery_is_settled_once(bus: InProcessBus) -> None:
    await bus.publish([Event("order.qty_failed", {"orderId": 3})])
    [delivery] = await collect(bus, ORDER_SERVICE_QUEUE.name, 1)
    await delivery.ack()

    with pytest.raises(RuntimeError, match="already settled"):
        await delivery.dead_letter()
    await bus.close()


async def test_unsettled_deliveries_stop_at_the_prefetch_window(bus: InProcessBus) -> None:
    await bus.publish([Event("order.qty_failed", {"orderId": i}) for i in range(1, 6)])
    received: list[Delivery] = []

    async def hold(delivery: Delivery) -> None:
        received.append(delivery)

    await bus.consume(ORDER_SERVICE_QUEUE, hold, prefetch=2)
    await asyncio.sleep(0.02)
    held = len(received)
    await received[0].ack()
    await asyncio.sleep(0.02)
    await bus.close()

    assert held == 2
    assert len(received) == 3

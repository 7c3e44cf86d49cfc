"""The bus and dead-letter admin ports (messaging/bus.py), against the in-process bus and
RabbitMQ: topic routing to our queues, the encoded event and its id on each delivery, the
prefetch window, redelivery of what was not acknowledged, dead letters with their reason,
listed, replayed with their id, purged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import aio_pika
import pytest

from orderstack.infrastructure import rabbitmq_bus
from orderstack.messaging.bus import Bus, DeadLetterAdmin, Delivery, PublishError
from orderstack.messaging.envelope import Event, decode
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import ALL_QUEUES, ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE

# How long to wait for a message that must not come (RabbitMQ delivers in milliseconds).
QUIET_SECONDS = 0.3


class AdminBus(Bus, DeadLetterAdmin, Protocol):
    """Both adapters implement both ports."""


MakeBus = Callable[[], AdminBus]


@pytest.fixture(params=["in-process", "rabbitmq"])
def amqp_url(request: pytest.FixtureRequest) -> str | None:
    """The adapter under test: None for the in-process bus, else the sandbox's vhost."""
    if request.param == "in-process":
        return None
    return str(request.getfixturevalue("sandbox").amqp_url)


@pytest.fixture
async def make_bus(amqp_url: str | None, tmp_path: Path) -> AsyncIterator[MakeBus]:
    """Unstarted buses on one broker: the same RabbitMQ vhost, or the same local bus file
    (what two processes, or one process before and after a restart, share)."""
    made: list[AdminBus] = []

    def make() -> AdminBus:
        bus: AdminBus = (
            InProcessBus(tmp_path / "bus.db") if amqp_url is None else rabbitmq_bus(amqp_url)
        )
        made.append(bus)
        return bus

    if amqp_url is not None:  # each test starts from empty queues
        first = make()
        await first.start()
        await _purge_all(amqp_url)
    yield make
    for bus in made:
        await bus.close()


@pytest.fixture
async def bus(make_bus: MakeBus) -> AdminBus:
    bus = make_bus()
    await bus.start()
    return bus


async def _purge_all(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for spec in ALL_QUEUES:
            for name in (spec.name, spec.dead_letter_queue):
                await (await channel.declare_queue(name, passive=True)).purge()
    finally:
        await connection.close()


class Consumer:
    """Records what a queue delivers; acknowledges each delivery unless told to hold it."""

    def __init__(self, *, ack: bool = True) -> None:
        self.ack = ack
        self.deliveries: list[Delivery] = []
        self._arrived = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self._arrived.set()
        if self.ack:
            await delivery.ack()

    @property
    def ids(self) -> list[str | None]:
        return [d.message_id for d in self.deliveries]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        async with asyncio.timeout(timeout):
            while len(self.deliveries) < count:
                self._arrived.clear()
                await self._arrived.wait()
        await asyncio.sleep(QUIET_SECONDS)  # and nothing more comes
        return self.deliveries


async def consume(bus: Bus, queue: str, *, ack: bool = True, prefetch: int = 10) -> Consumer:
    consumer = Consumer(ack=ack)
    spec = ORDER_SERVICE_QUEUE if queue == ORDER_SERVICE_QUEUE.name else PRODUCT_SERVICE_QUEUE
    await bus.consume(spec, consumer, prefetch)
    return consumer


def answers(count: int) -> list[Event]:
    return [Event("order.qty_confirmed", {"orderId": i}) for i in range(1, count + 1)]


ORDERS, PRODUCTS = ORDER_SERVICE_QUEUE.name, PRODUCT_SERVICE_QUEUE.name


# -- the bus port ---------------------------------------------------------------------------


async def test_each_event_reaches_the_queue_bound_to_its_name(bus: AdminBus) -> None:
    created = Event("order.created", {"orderId": 1, "productId": 2})
    confirmed = Event("order.qty_confirmed", {"orderId": 1})
    failed = Event("order.qty_failed", {"orderId": 2})
    await bus.publish([created, confirmed, Event("product_created", {"id": 2}), failed])

    products, orders = await consume(bus, PRODUCTS), await consume(bus, ORDERS)
    await orders.wait_for(2)
    await products.wait_for(1)

    assert products.ids == [created.id]
    assert orders.ids == [confirmed.id, failed.id]


async def test_a_delivery_carries_the_encoded_event_its_id_and_its_name(bus: AdminBus) -> None:
    event = Event("order.created", {"orderId": 1, "productId": 2, "totalPrice": 12.5})
    await bus.publish([event])

    [delivery] = await (await consume(bus, PRODUCTS)).wait_for(1)

    assert (delivery.message_id, delivery.routing_key) == (event.id, "order.created")
    assert decode(delivery.body, message_id=delivery.message_id, routing_key=None) == event


async def test_an_event_no_queue_is_bound_to_is_dropped_without_error(bus: AdminBus) -> None:
    # product_created is a broadcast for whoever binds a queue to it: nobody here does.
    await bus.publish([Event("product_created", {"id": 2, "name": "Phone"})])

    consumers = [await consume(bus, spec.name) for spec in ALL_QUEUES]
    await asyncio.sleep(QUIET_SECONDS)

    assert [c.deliveries for c in consumers] == [[], []]
    assert [await bus.dead_letters(spec.name, 10) for spec in ALL_QUEUES] == [[], []]


async def test_a_dropped_event_does_not_hold_back_the_rest_of_its_batch(bus: AdminBus) -> None:
    answer = Event("order.qty_confirmed", {"orderId": 1})

    await bus.publish([Event("product_created", {"id": 2}), answer])

    orders = await consume(bus, ORDERS)
    await orders.wait_for(1)
    assert orders.ids == [answer.id]


async def test_publishing_before_start_is_a_publish_error(make_bus: MakeBus) -> None:
    with pytest.raises(PublishError):
        await make_bus().publish([Event("order.created", {"orderId": 1})])


async def test_unacknowledged_deliveries_stop_at_the_prefetch_window(bus: AdminBus) -> None:
    await bus.publish(answers(5))

    held = await consume(bus, ORDERS, ack=False, prefetch=2)
    await held.wait_for(2)
    await held.deliveries[0].ack()
    await held.wait_for(3)

    assert len(held.deliveries) == 3


async def test_what_was_not_acknowledged_is_delivered_again_and_what_was_is_not(
    make_bus: MakeBus,
) -> None:
    events = answers(4)
    first = make_bus()
    await first.start()
    await first.publish(events)
    held = await consume(first, ORDERS, ack=False)
    for delivery in (await held.wait_for(4))[:2]:
        await delivery.ack()
    await asyncio.sleep(QUIET_SECONDS)  # the acks reach the broker (or the file)
    await first.close()  # the consumer goes away with two deliveries unsettled

    second = make_bus()
    await second.start()
    again = await consume(second, ORDERS)
    await again.wait_for(2)

    assert again.ids == [e.id for e in events[2:]]


async def test_a_reachable_bus_is_up_once_started_and_down_once_closed(
    make_bus: MakeBus,
) -> None:
    bus = make_bus()
    await bus.start()
    assert await bus.is_up()

    await bus.close()

    assert not await bus.is_up()


# -- the dead-letter admin port ---------------------------------------------------------------


async def dead_letter_all(bus: AdminBus, events: list[Event], reason: str) -> Consumer:
    """Publish ``events`` and have a consumer of the order service's queue dead-letter each,
    in order; return that consumer (still subscribed, acknowledging what comes next)."""
    await bus.publish(events)
    consumer = await consume(bus, ORDERS, ack=False)
    for delivery in await consumer.wait_for(len(events)):
        await delivery.dead_letter(f"{reason} {delivery.message_id}")
    consumer.ack = True
    return consumer


async def test_a_dead_letter_is_listed_with_its_reason_and_left_in_place(bus: AdminBus) -> None:
    [event] = answers(1)
    await dead_letter_all(bus, [event], "orderId unknown")

    listed = await bus.dead_letters(ORDERS, 10)
    again = await bus.dead_letters(ORDERS, 10)

    [letter] = listed
    assert (letter.queue, letter.message_id, letter.routing_key) == (
        ORDERS,
        event.id,
        "order.qty_confirmed",
    )
    assert letter.reason == f"orderId unknown {event.id}"
    assert decode(letter.body, message_id=letter.message_id, routing_key=None) == event
    assert again == listed


async def test_dead_letters_are_listed_oldest_first_up_to_the_limit(bus: AdminBus) -> None:
    events = answers(3)
    await dead_letter_all(bus, events, "bad")

    assert [m.message_id for m in await bus.dead_letters(ORDERS, 2)] == [e.id for e in events[:2]]
    assert await bus.dead_letters(PRODUCTS, 10) == []


async def test_a_replayed_dead_letter_is_delivered_again_with_its_id(bus: AdminBus) -> None:
    events = answers(2)
    consumer = await dead_letter_all(bus, events, "bad")

    replayed = await bus.replay(ORDERS, [events[0].id])
    left = await bus.dead_letters(ORDERS, 10)
    [_, _, again] = await consumer.wait_for(3)

    assert replayed == 1
    assert [m.message_id for m in left] == [events[1].id]
    assert (again.message_id, again.routing_key) == (events[0].id, "order.qty_confirmed")
    assert decode(again.body, message_id=again.message_id, routing_key=None) == events[0]


async def test_replaying_all_empties_the_dead_letter_queue(bus: AdminBus) -> None:
    await dead_letter_all(bus, answers(3), "bad")

    assert await bus.replay(ORDERS, None) == 3
    assert await bus.dead_letters(ORDERS, 10) == []


async def test_purge_drops_only_the_named_dead_letters_or_all(bus: AdminBus) -> None:
    events = answers(3)
    await dead_letter_all(bus, events, "junk")

    purged_one = await bus.purge(ORDERS, [events[0].id])
    # As a set: a quorum dead-letter queue puts back what a scan looked at in its own order.
    left = sorted(m.message_id for m in await bus.dead_letters(ORDERS, 10))
    purged_rest = await bus.purge(ORDERS, None)

    assert (purged_one, left) == (1, sorted(e.id for e in events[1:]))
    assert purged_rest == 2
    assert await bus.dead_letters(ORDERS, 10) == []

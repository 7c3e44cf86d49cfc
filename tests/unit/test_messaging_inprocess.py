"""The in-process bus (embedded default) keeps the broker's semantics the consumer relies on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orderstack.messaging.bus import Delivery, PublishError
from orderstack.messaging.envelope import Event, decode
from orderstack.messaging.inprocess import IDLE_POLL_SECONDS, InProcessBus
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

    assert await bus.depth(PRODUCT_SERVICE_QUEUE.name) == 1
    assert await bus.depth(ORDER_SERVICE_QUEUE.name) == 1  # product_created: bound to none
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

    assert {spec.name: await bus.depth(spec.name) for spec in ALL_QUEUES} == {
        spec.name: 0 for spec in ALL_QUEUES
    }

    received: list[Delivery] = []

    async def record(delivery: Delivery) -> None:
        received.append(delivery)
        await delivery.ack()

    for spec in ALL_QUEUES:
        await bus.consume(spec, record, prefetch=10)
    await asyncio.sleep(0.02)
    letters = [await bus.dead_letters(spec.name, 10) for spec in ALL_QUEUES]
    await bus.close()

    assert received == []
    assert letters == [[], []]


async def test_a_dropped_event_does_not_hold_back_the_rest_of_its_batch(
    bus: InProcessBus,
) -> None:
    answer = Event("order.qty_confirmed", {"orderId": 1})
    await bus.publish([Event("product_created", {"id": 2}), answer])

    [delivery] = await collect(bus, ORDER_SERVICE_QUEUE.name, 1)
    depth = await bus.depth(PRODUCT_SERVICE_QUEUE.name)
    await bus.close()

    assert delivery.message_id == answer.id
    assert depth == 0


async def test_publishing_before_start_is_a_publish_error() -> None:
    with pytest.raises(PublishError):
        await InProcessBus().publish([Event("order.created", {})])


async def test_dead_lettered_message_lands_in_the_dead_letter_list(bus: InProcessBus) -> None:
    await bus.publish_raw(PRODUCT_SERVICE_QUEUE.name, b"junk", "m-1", "order.created")

    [delivery] = await collect(bus, PRODUCT_SERVICE_QUEUE.name, 1)
    await delivery.dead_letter("not JSON")
    letters = await bus.dead_letters(PRODUCT_SERVICE_QUEUE.name, 10)
    await bus.close()

    assert [(m.body, m.message_id, m.reason) for m in letters] == [(b"junk", "m-1", "not JSON")]


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


# -- durability: what a Ctrl-C or a kill -9 of `orderstack dev` leaves behind -----------------


async def _consume_all(bus: InProcessBus, queue_name: str, *, ack: bool) -> list[Delivery]:
    queue = ORDER_SERVICE_QUEUE if queue_name == ORDER_SERVICE_QUEUE.name else PRODUCT_SERVICE_QUEUE
    received: list[Delivery] = []

    async def on_delivery(delivery: Delivery) -> None:
        received.append(delivery)
        if ack:
            await delivery.ack()

    await bus.consume(queue, on_delivery, prefetch=100)
    await asyncio.sleep(0.1)
    return received


async def test_published_messages_survive_a_restart(tmp_path: Path) -> None:
    events = [Event("order.created", {"orderId": i, "productId": 1}) for i in range(1, 4)]
    first = InProcessBus(tmp_path / "bus.db")
    await first.start()
    await first.publish(events)
    await first.close()  # nobody consumed them

    second = InProcessBus(tmp_path / "bus.db")
    await second.start()
    received = await _consume_all(second, PRODUCT_SERVICE_QUEUE.name, ack=True)
    await second.close()

    assert [d.message_id for d in received] == [e.id for e in events]


async def test_unacknowledged_deliveries_come_back_and_acknowledged_ones_do_not(
    tmp_path: Path,
) -> None:
    events = [Event("order.qty_confirmed", {"orderId": i}) for i in range(1, 5)]
    first = InProcessBus(tmp_path / "bus.db")
    await first.start()
    await first.publish(events)
    held = await _consume_all(first, ORDER_SERVICE_QUEUE.name, ack=False)
    for delivery in held[:2]:
        await delivery.ack()
    await asyncio.sleep(0.1)  # the acks reach the file
    await first.close()  # the process dies with two deliveries in flight

    second = InProcessBus(tmp_path / "bus.db")
    await second.start()
    again = await _consume_all(second, ORDER_SERVICE_QUEUE.name, ack=True)
    await asyncio.sleep(0.05)
    left = await second.depth(ORDER_SERVICE_QUEUE.name)
    await second.close()

    assert len(held) == 4
    assert [d.message_id for d in again] == [e.id for e in events[2:]]
    assert left == 0


async def test_a_replayed_dead_letter_is_delivered_again_with_its_id(tmp_path: Path) -> None:
    bus = InProcessBus(tmp_path / "bus.db")
    await bus.start()
    await bus.publish_raw(PRODUCT_SERVICE_QUEUE.name, b"{}", "m-7", "order.created")
    [delivery] = await _consume_all(bus, PRODUCT_SERVICE_QUEUE.name, ack=False)
    await delivery.dead_letter("bad payload")

    # Another process (the `orderstack dlq` command) replays it while this one runs.
    admin = InProcessBus(tmp_path / "bus.db")
    await admin.start()
    replayed = await admin.replay(PRODUCT_SERVICE_QUEUE.name, ["m-7"])
    after_replay = await admin.dead_letters(PRODUCT_SERVICE_QUEUE.name, 10)
    await admin.close()
    await asyncio.sleep(IDLE_POLL_SECONDS + 0.3)  # found by the consumer's idle poll
    await bus.close()

    assert replayed == 1
    assert after_replay == []


async def test_purge_drops_only_the_named_dead_letters() -> None:
    bus = InProcessBus()
    await bus.start()
    for message_id in ("a", "b"):
        await bus.publish_raw(PRODUCT_SERVICE_QUEUE.name, b"x", message_id, "order.created")
    for delivery in await _consume_all(bus, PRODUCT_SERVICE_QUEUE.name, ack=False):
        await delivery.dead_letter("junk")

    purged = await bus.purge(PRODUCT_SERVICE_QUEUE.name, ["a"])
    left = [m.message_id for m in await bus.dead_letters(PRODUCT_SERVICE_QUEUE.name, 10)]
    await bus.close()

    assert (purged, left) == (1, ["b"])

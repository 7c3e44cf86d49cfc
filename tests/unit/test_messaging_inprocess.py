"""What only the in-process bus (embedded default) does: a delivery settled twice is a bug,
its file outlives the process, and another process (``orderstack dlq``) can replay into it.
The bus contract it shares with RabbitMQ is tests/contract/test_bus_contract.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orderstack.messaging.bus import Delivery
from orderstack.messaging.envelope import Event
from orderstack.messaging.inprocess import IDLE_POLL_SECONDS, InProcessBus
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE


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


async def test_a_delivery_is_settled_once(bus: InProcessBus) -> None:
    await bus.publish([Event("order.qty_failed", {"orderId": 3})])
    [delivery] = await collect(bus, ORDER_SERVICE_QUEUE.name, 1)
    await delivery.ack()

    with pytest.raises(RuntimeError, match="already settled"):
        await delivery.dead_letter()
    await bus.close()


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


async def test_a_dead_letter_replayed_by_another_process_is_found_by_the_idle_poll(
    tmp_path: Path,
) -> None:
    bus = InProcessBus(tmp_path / "bus.db")
    await bus.start()
    await bus.publish_raw(PRODUCT_SERVICE_QUEUE.name, b"{}", "m-7", "order.created")
    received = await _consume_all(bus, PRODUCT_SERVICE_QUEUE.name, ack=False)
    await received[0].dead_letter("bad payload")

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
    assert [d.message_id for d in received] == ["m-7", "m-7"]

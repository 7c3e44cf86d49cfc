"""The outbox relay and what only the RabbitMQ bus does (the seed's message properties, its
frame buffers once tuned), against the real broker. The bus contract it shares with the
in-process bus is tests/contract/test_bus_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.messaging.bus import Delivery, PublishError
from orderstack.messaging.envelope import Event
from orderstack.messaging.outbox import OutboxRelay
from orderstack.messaging.rabbitmq import FRAME_BUFFER, RabbitMQBus, tune_aiormq
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE
from orderstack.orders.repository import OrderUnitOfWork
from orderstack.orders.repository import outbox as orders_outbox

pytestmark = pytest.mark.integration


async def _drain(amqp_url: str, queue: str, expect: int, timeout: float = 20) -> list[str]:
    """Consume and ack up to ``expect`` messages; return their message ids."""
    ids: list[str] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(ids) < expect and asyncio.get_running_loop().time() < deadline:
            message = await q.get(fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            ids.append(message.message_id or "")
            await message.ack()
    finally:
        await connection.close()
    return ids


async def _write_order_events(engine: AsyncEngine, n: int) -> list[str]:
    events = [Event("order.created", {"orderId": i + 1, "productId": 1}) for i in range(n)]
    async with OrderUnitOfWork(engine, None) as uow:
        await uow.outbox.add(events)
        await uow.commit()
    return [e.id for e in events]


async def test_two_relays_publish_every_row_exactly_once(
    engine: AsyncEngine, sandbox: Sandbox
) -> None:
    buses = [RabbitMQBus(sandbox.amqp_url), RabbitMQBus(sandbox.amqp_url)]
    for bus in buses:
        await bus.start()
    try:
        await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, 10_000, timeout=0.5)
        written = await _write_order_events(engine, 400)
        relays = [OutboxRelay(engine, orders_outbox, bus, batch_size=50) for bus in buses]

        async def relay_all(relay: OutboxRelay) -> None:
            while await relay.relay_once():
                pass

        await asyncio.gather(*(relay_all(r) for r in relays))
        received = await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, len(written))
        assert sorted(received) == sorted(written)  # all of them, none twice
        assert sum(r.published for r in relays) == 400
        assert await relays[0].backlog() == 0
    finally:
        for bus in buses:
            await bus.close()


class _StalledBus(RabbitMQBus):
    """Connected, but the broker never confirms: a publish that hangs."""

    async def publish(self, events: Sequence[Event]) -> None:
        await asyncio.Event().wait()


async def test_a_stalled_publish_releases_its_rows_and_connection(
    engine: AsyncEngine, sandbox: Sandbox
) -> None:
    bus = _StalledBus(sandbox.amqp_url)
    await bus.start()
    try:
        relay = OutboxRelay(engine, orders_outbox, bus, publish_timeout=0.5)
        written = await _write_order_events(engine, 2)
        with pytest.raises(TimeoutError):
            await relay.relay_once()
        # The rows are neither sent nor locked: another replica's round takes them at once.
        async with engine.connect() as conn, conn.begin():
            free = (
                (
                    await conn.execute(
                        sa.select(orders_outbox.c.event_id)
                        .where(orders_outbox.c.event_id.in_(written))
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
    finally:
        await bus.close()
    assert sorted(free) == sorted(written)


async def test_relay_keeps_rows_when_the_broker_is_unreachable(
    engine: AsyncEngine, sandbox: Sandbox
) -> None:
    live = RabbitMQBus(sandbox.amqp_url)
    await live.start()  # the topology declared, whichever test of the module ran before
    try:
        await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, 10_000, timeout=0.5)
        dead_bus = RabbitMQBus("amqp://guest:guest@127.0.0.1:1/none")  # never started
        relay = OutboxRelay(engine, orders_outbox, dead_bus)
        before = await relay.backlog()
        written = await _write_order_events(engine, 3)
        assert await relay.relay_once() == 0  # no transaction opened while the broker is away
        assert await relay.backlog() == before + 3

        while await OutboxRelay(engine, orders_outbox, live).relay_once():
            pass
    finally:
        await live.close()
    received = await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, before + 3)
    assert set(written) <= set(received)


async def test_published_message_carries_the_seed_envelope_and_properties(
    sandbox: Sandbox,
) -> None:
    bus = RabbitMQBus(sandbox.amqp_url)
    await bus.start()
    try:
        await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, 10_000, timeout=0.5)
        event = Event("order.created", {"orderId": 5, "productId": 9, "totalPrice": 12.5})
        await bus.publish([event])
        connection = await aio_pika.connect(sandbox.amqp_url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(PRODUCT_SERVICE_QUEUE.name, passive=True)
            message = None
            for _ in range(100):
                message = await queue.get(fail=False)
                if message is not None:
                    break
                await asyncio.sleep(0.05)
            assert message is not None
            await message.ack()
        finally:
            await connection.close()
        assert orjson.loads(message.body) == {"pattern": "order.created", "data": event.data}
        assert message.message_id == event.id
        assert message.type == "order.created"
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.exchange == EXCHANGE
    finally:
        await bus.close()


async def test_relay_publishes_the_oldest_unsent_rows_first(
    engine: AsyncEngine, sandbox: Sandbox
) -> None:
    bus = RabbitMQBus(sandbox.amqp_url)
    await bus.start()
    try:
        while await OutboxRelay(engine, orders_outbox, bus).relay_once():
            pass  # start from an empty backlog
        written = await _write_order_events(engine, 5)
        assert await OutboxRelay(engine, orders_outbox, bus, batch_size=2).relay_once() == 2
        async with engine.connect() as conn:
            sent = set(
                (
                    await conn.execute(
                        sa.select(orders_outbox.c.event_id).where(
                            orders_outbox.c.event_id.in_(written),
                            orders_outbox.c.published_at.is_not(None),
                        )
                    )
                ).scalars()
            )
        assert sent == set(written[:2])
    finally:
        await bus.close()
    await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, 10_000, timeout=0.5)


async def test_once_tuned_the_bus_channels_buffer_a_relay_round_of_frames(
    sandbox: Sandbox,
) -> None:
    """With aiormq's default of 10 frames, each publish, ack and delivery beyond ten waited
    an event-loop turn; after ``tune_aiormq`` (the composition root calls it) every channel
    the bus opens has the wide buffers (guards against an upgrade undoing it)."""
    tune_aiormq(FRAME_BUFFER)
    bus = RabbitMQBus(sandbox.amqp_url)
    await bus.start()
    try:

        async def ignore(_: object) -> None:
            return None

        await bus.consume(PRODUCT_SERVICE_QUEUE, ignore, prefetch=10)
        assert bus._connection is not None and bus._connection.transport is not None
        channels = bus._connection.transport.connection.channels.values()
        assert len(channels) >= 2  # the publishing channel and the consumer's
        assert {c.frames.maxsize for c in channels} == {FRAME_BUFFER}
        assert bus._connection.transport.connection.write_queue.maxsize == FRAME_BUFFER
    finally:
        await bus.close()


async def test_an_order_event_no_queue_takes_is_refused_not_lost(sandbox: Sandbox) -> None:
    """order.created is published mandatory: were the product service's queue unbound, the
    broker returns it and the publish fails, so the relay keeps the row for later."""
    bus = RabbitMQBus(sandbox.amqp_url)
    await bus.start()
    connection = await aio_pika.connect(sandbox.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(PRODUCT_SERVICE_QUEUE.name, passive=True)
        await queue.unbind(EXCHANGE, "order.created")

        with pytest.raises(PublishError):
            await bus.publish([Event("order.created", {"orderId": 1, "productId": 1})])
        await bus.publish([Event("product_created", {"id": 1})])  # a broadcast: dropped, fine
    finally:
        await connection.close()
        await bus.close()
    rebound = RabbitMQBus(sandbox.amqp_url)  # every start declares the bindings again
    await rebound.start()
    await rebound.close()


async def _held_deliveries(bus: RabbitMQBus, count: int) -> list[Delivery]:
    """Subscribe to the product service's queue and hold ``count`` deliveries, unsettled."""
    held: list[Delivery] = []
    arrived = asyncio.Event()

    async def hold(delivery: Delivery) -> None:
        held.append(delivery)
        if len(held) >= count:
            arrived.set()

    await bus.consume(PRODUCT_SERVICE_QUEUE, hold, prefetch=count)
    await asyncio.wait_for(arrived.wait(), 20)
    return held


async def test_a_batch_ack_never_settles_a_delivery_outside_the_batch(sandbox: Sandbox) -> None:
    # The consumer acks a batch at once (one multiple ack when it can). A delivery of the
    # same channel not in the batch, here the first one (a dead letter not moved yet, say),
    # must stay unacked: the broker gives it out again, and only it.
    publisher = RabbitMQBus(sandbox.amqp_url)
    await publisher.start()
    try:
        await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, 10_000, timeout=0.5)
        events = [Event("order.created", {"orderId": i + 1, "productId": 1}) for i in range(6)]
        await publisher.publish(events)
        consumer = RabbitMQBus(sandbox.amqp_url)
        await consumer.start()
        try:
            held = await _held_deliveries(consumer, 6)
            await consumer.ack_all(held[1:4])  # the first is left out: acked one by one
            await consumer.ack_all(held[4:])  # nothing unsettled below but the first: alone too
        finally:
            await consumer.close()  # the unacked first delivery goes back to the queue
        again = await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, 6, timeout=3)
        assert again == [held[0].message_id]

        await publisher.publish(events[:5])
        consumer = RabbitMQBus(sandbox.amqp_url)
        await consumer.start()
        try:
            await consumer.ack_all(await _held_deliveries(consumer, 5))  # one multiple ack
        finally:
            await consumer.close()
        assert await _drain(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name, 5, timeout=1.5) == []
    finally:
        await publisher.close()

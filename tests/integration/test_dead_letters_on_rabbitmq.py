"""Dead letters on the real broker: the consumer records why, and `orderstack dlq`'s port
lists, replays (same message_id) and purges them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aio_pika
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.invariants import queue_depths
from harness.sandbox import Sandbox
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.bus import DeadLetterAdmin
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.rabbitmq import (
    QUEUE_HEADER,
    REASON_HEADER,
    ROUTING_KEY_HEADER,
    RabbitMQBus,
)
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.repository import ProductUnitOfWork
from orderstack.products.service import ProductService

from .amqp import take_all, until

pytestmark = pytest.mark.integration

QUEUE = PRODUCT_SERVICE_QUEUE.name
DLQ = PRODUCT_SERVICE_QUEUE.dead_letter_queue


@pytest.fixture
async def admin(sandbox: Sandbox) -> AsyncIterator[RabbitMQBus]:
    bus = RabbitMQBus(sandbox.amqp_url)
    await bus.start()
    await _empty(sandbox.amqp_url)
    yield bus
    await bus.close()


async def _empty(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in (QUEUE, DLQ):
            await (await channel.declare_queue(name, passive=True)).purge()
    finally:
        await connection.close()


async def _publish_raw(amqp_url: str, body: bytes, message_id: str, key: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, content_type="application/json"),
            routing_key=key,
        )
    finally:
        await connection.close()


async def _depth(amqp_url: str, queue: str) -> int:
    return (await queue_depths(amqp_url))[queue]


@contextlib.asynccontextmanager
async def _running_consumer(engine: AsyncEngine, amqp_url: str) -> AsyncIterator[EventConsumer]:
    """The product service's real consumer on ``QUEUE``, running until the block ends."""
    bus = RabbitMQBus(amqp_url)
    await bus.start()
    service = ProductService(lambda: ProductUnitOfWork(engine, None), InProcessProductCache())
    consumer = EventConsumer(
        bus,
        PRODUCT_SERVICE_QUEUE,
        lambda: ProductUnitOfWork(engine, None),
        OrderStockHandler(service),
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()
        await bus.close()  # the subscription goes with the connection


async def _dead_letter_through_the_consumer(
    engine: AsyncEngine, amqp_url: str, messages: list[tuple[bytes, str]]
) -> None:
    """Run the product service's real consumer until it dead-lettered these messages."""
    before = await _depth(amqp_url, DLQ)
    async with _running_consumer(engine, amqp_url) as consumer:
        for body, message_id in messages:
            await _publish_raw(amqp_url, body, message_id, "order.created")

        async def all_dead_lettered() -> bool:
            return await _depth(amqp_url, DLQ) == before + len(messages)

        await until(all_dead_lettered)
        assert consumer.dead_lettered == len(messages)


async def test_a_replayed_letter_that_fails_again_is_not_replayed_twice(
    engine: AsyncEngine, sandbox: Sandbox, admin: RabbitMQBus
) -> None:
    """Replay all while the consumer runs: each letter goes back, fails again and is
    dead-lettered again, behind the ones the replay has not reached yet. The replay takes
    each once (it ends at a letter back again), never going round for ever."""
    ids = [f"again-{i}" for i in range(6)]
    await _dead_letter_through_the_consumer(engine, sandbox.amqp_url, [(b"{", i) for i in ids])
    async with _running_consumer(engine, sandbox.amqp_url) as consumer:
        async with asyncio.timeout(30):  # a replay going round would never end
            assert await admin.replay(QUEUE, None) == len(ids)

        async def all_back() -> bool:
            return consumer.dead_lettered == len(ids)

        await until(all_back)
    letters = []
    for _ in range(50):  # a quorum queue requeues what the replay gave back a moment later
        letters = sorted(d.message_id or "" for d in await admin.dead_letters(QUEUE, 20))
        if len(letters) >= len(ids):
            break
        await asyncio.sleep(0.2)
    assert letters == ids  # each dead-lettered again, once


async def test_malformed_message_is_dead_lettered_with_its_reason_then_replayed_and_purged(
    engine: AsyncEngine, sandbox: Sandbox, admin: RabbitMQBus
) -> None:
    assert isinstance(admin, DeadLetterAdmin)
    await _dead_letter_through_the_consumer(engine, sandbox.amqp_url, [(b"not json", "bad-1")])

    # The copy in the dead-letter queue says why, and where it came from.
    [raw] = await take_all(sandbox.amqp_url, DLQ)
    assert raw.message_id == "bad-1"
    assert raw.body == b"not json"
    assert raw.headers[REASON_HEADER] == "body is not JSON"
    assert raw.headers[ROUTING_KEY_HEADER] == "order.created"
    assert raw.headers[QUEUE_HEADER] == QUEUE
    assert await _depth(sandbox.amqp_url, QUEUE) == 0  # the original was acked, not requeued

    # Put it back as the consumer left it, and look at it through the admin port.
    await _dead_letter_through_the_consumer(engine, sandbox.amqp_url, [(b"not json", "bad-1")])
    [letter] = await admin.dead_letters(QUEUE, 10)
    assert (letter.queue, letter.message_id, letter.routing_key, letter.body, letter.reason) == (
        QUEUE,
        "bad-1",
        "order.created",
        b"not json",
        "body is not JSON",
    )
    assert await _depth(sandbox.amqp_url, DLQ) == 1  # listing left it there

    # Replay: back on the consuming queue, same id and routing key, gone from the DLQ.
    assert await admin.replay(QUEUE, None) == 1
    assert await _depth(sandbox.amqp_url, DLQ) == 0
    [replayed] = await take_all(sandbox.amqp_url, QUEUE)
    assert replayed.message_id == "bad-1"
    assert replayed.routing_key == "order.created"
    assert replayed.body == b"not json"
    assert REASON_HEADER not in (replayed.headers or {})

    # Purge: the dead-letter queue is empty afterwards.
    await _dead_letter_through_the_consumer(
        engine, sandbox.amqp_url, [(b"[]", "bad-2"), (b"{", "bad-3")]
    )
    assert await admin.purge(QUEUE, None) == 2
    assert await _depth(sandbox.amqp_url, DLQ) == 0
    assert await admin.dead_letters(QUEUE, 10) == []


async def test_replay_and_purge_by_id_leave_the_others(
    engine: AsyncEngine, sandbox: Sandbox, admin: RabbitMQBus
) -> None:
    bad = orjson.dumps({"orderId": "x", "productId": 1})
    ids = [f"m-{i}" for i in range(5)]
    await _dead_letter_through_the_consumer(engine, sandbox.amqp_url, [(bad, i) for i in ids])

    listed = [d.message_id for d in await admin.dead_letters(QUEUE, 10)]
    assert sorted(listed) == ids
    # A listing leaves every message in place. The dead-letter queue is a quorum queue,
    # which puts the messages a listing looked at back behind the others (RabbitMQ 3.x), so
    # listings are compared as sets.
    assert len(await admin.dead_letters(QUEUE, 2)) == 2
    assert sorted(d.message_id for d in await admin.dead_letters(QUEUE, 10)) == ids

    assert await admin.replay(QUEUE, [ids[1], "no-such-id"]) == 1
    assert await admin.purge(QUEUE, [ids[3]]) == 1
    # The quorum queue requeues what the scans gave back a moment later (on a busy broker,
    # after the call returned): the listing is read again until every letter is back.
    left: list[str | None] = []
    for _ in range(50):
        left = sorted(d.message_id for d in await admin.dead_letters(QUEUE, 10))
        if len(left) >= 3:
            break
        await asyncio.sleep(0.2)
    assert left == [ids[0], ids[2], ids[4]]
    assert [m.message_id for m in await take_all(sandbox.amqp_url, QUEUE)] == [ids[1]]
    assert await admin.purge(QUEUE, None) == 3


async def test_a_message_the_broker_dead_lettered_itself_is_listed_and_replayed(
    sandbox: Sandbox, admin: RabbitMQBus
) -> None:
    """A reject without requeue (the fallback when the copy is not confirmed, or a message
    dead-lettered before reasons existed) carries only the broker's x-death record."""
    event = orjson.dumps({"pattern": "order.created", "data": {"orderId": 1, "productId": 1}})
    await _publish_raw(sandbox.amqp_url, event, "native-1", "order.created")
    connection = await aio_pika.connect(sandbox.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(QUEUE, passive=True)
        message = None
        for _ in range(100):
            if (message := await queue.get(fail=False)) is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None
        await message.reject(requeue=False)
    finally:
        await connection.close()

    async def arrived() -> bool:
        return await _depth(sandbox.amqp_url, DLQ) == 1

    await until(arrived)
    [letter] = await admin.dead_letters(QUEUE, 10)
    assert (letter.message_id, letter.routing_key, letter.reason) == (
        "native-1",
        "order.created",
        "broker: rejected",
    )
    assert await admin.replay(QUEUE, ["native-1"]) == 1
    [replayed] = await take_all(sandbox.amqp_url, QUEUE)
    assert (replayed.message_id, replayed.routing_key, replayed.body) == (
        "native-1",
        "order.created",
        event,
    )
    assert "x-death" not in (replayed.headers or {})


async def test_unknown_queue_is_refused(admin: RabbitMQBus) -> None:
    with pytest.raises(ValueError, match="unknown queue"):
        await admin.dead_letters("nope", 10)

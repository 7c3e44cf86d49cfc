"""The RabbitMQ bus publishes a round of events as one write (``_publish_pipelined``): on
the wire each event is still the message ``basic_publish`` sends, each confirmed or
refused on its own, beside publishes of the same channel made the other way."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aio_pika
import aiormq
import pytest

from harness.sandbox import Sandbox
from orderstack.messaging.bus import PublishError
from orderstack.messaging.envelope import Event, encode
from orderstack.messaging.rabbitmq import (
    PUBLISH_TIMEOUT_SECONDS,
    RabbitMQBus,
    _pipelining,
    _publish_pipelined,
)
from orderstack.messaging.topology import (
    EXCHANGE,
    ORDER_SERVICE_QUEUE,
    PRODUCT_SERVICE_QUEUE,
    ROUTED_EVENTS,
)
from tests.integration.amqp import started_bus, take_all

pytestmark = pytest.mark.integration


async def _channel(bus: RabbitMQBus) -> aiormq.Channel:
    assert bus._publish_channel is not None
    return cast(aiormq.Channel, await bus._publish_channel.get_underlay_channel())


def _outgoing(bus: RabbitMQBus, event: Event) -> tuple[bytes, str, Any, bool]:
    return encode(event), event.name, bus._properties([event]), event.name in ROUTED_EVENTS


def _seen(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    """Everything a consumer sees of a message but its place in the queue."""
    info = dict(message.info())
    for key in ("delivery_tag", "redelivered", "consumer_tag", "message_count"):
        info.pop(key, None)
    return {"body": message.body, **info}


async def test_a_pipelined_message_is_on_the_wire_what_basic_publish_sends(
    sandbox: Sandbox,
) -> None:
    async with started_bus(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name) as bus:
        event = Event(
            "order.created",
            {"orderId": 7, "productId": 2, "totalPrice": 12.5},
            request_id="req-7",
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        channel = await _channel(bus)
        assert _pipelining(channel, [_outgoing(bus, event)])
        await bus.publish([event])  # pipelined
        body, routing_key, properties, mandatory = _outgoing(bus, event)
        confirm = await channel.basic_publish(
            body,
            exchange=EXCHANGE,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )
        assert isinstance(confirm, aiormq.spec.Basic.Ack)
        taken: list[aio_pika.abc.AbstractIncomingMessage] = []
        for _ in range(100):
            taken += await take_all(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name)
            if len(taken) >= 2:
                break
            await asyncio.sleep(0.05)
        pipelined, single = taken
        assert _seen(pipelined) == _seen(single)
        assert pipelined.message_id == event.id and pipelined.user_id == "guest"
        headers = {k: v for k, v in (pipelined.headers or {}).items() if k != "x-delivery-count"}
        assert headers == {"x-request-id": "req-7", "traceparent": event.traceparent}


async def test_a_returned_message_fails_alone_and_the_channel_goes_on(sandbox: Sandbox) -> None:
    """Of a round, the message no queue takes (mandatory, returned) fails and the others
    are confirmed; the channel's bookkeeping is left clean, its next round confirmed."""
    bus = RabbitMQBus(sandbox.amqp_url)
    await bus.start()
    connection = await aio_pika.connect(sandbox.amqp_url)
    try:
        amqp = await connection.channel()
        queue = await amqp.declare_queue(PRODUCT_SERVICE_QUEUE.name, passive=True)
        await queue.unbind(EXCHANGE, "order.created")
        events = [
            Event("order.qty_confirmed", {"orderId": 1}),
            Event("order.created", {"orderId": 2, "productId": 1}),  # returned
            Event("product_created", {"id": 3}),  # a broadcast, not mandatory: confirmed
            Event("order.qty_failed", {"orderId": 4}),
        ]
        channel = await _channel(bus)
        results = await _publish_pipelined(
            channel, EXCHANGE, [_outgoing(bus, event) for event in events]
        )
        assert [type(r) for r in results] == [
            aiormq.spec.Basic.Ack,
            aiormq.exceptions.PublishError,
            aiormq.spec.Basic.Ack,
            aiormq.spec.Basic.Ack,
        ]
        with pytest.raises(PublishError):
            await bus.publish(events[1:2])
        await queue.bind(EXCHANGE, "order.created")
        await bus.publish(events)
        assert not channel.confirmations
        assert not channel.message_id_delivery_tag
    finally:
        await connection.close()
        await bus.close()
    taken = await take_all(sandbox.amqp_url, ORDER_SERVICE_QUEUE.name)
    assert [m.message_id for m in taken] == [events[0].id, events[3].id] * 2
    taken = await take_all(sandbox.amqp_url, PRODUCT_SERVICE_QUEUE.name)
    assert [m.message_id for m in taken] == [events[1].id]


async def test_rounds_and_single_publishes_share_the_channel(sandbox: Sandbox) -> None:
    """Rounds published at once, beside single publishes on the same channel (a dead
    letter's copy takes it too): every message confirmed and delivered once, in the
    order of its round."""
    async with started_bus(sandbox.amqp_url, ORDER_SERVICE_QUEUE.name) as bus:
        rounds = [
            [Event("order.qty_confirmed", {"orderId": 100 * r + i}) for i in range(50)]
            for r in range(4)
        ]
        singles = [Event("order.qty_failed", {"orderId": 1000 + i}) for i in range(5)]
        channel = await _channel(bus)

        async def single(event: Event) -> object:
            body, routing_key, properties, mandatory = _outgoing(bus, event)
            return await channel.basic_publish(
                body,
                exchange=EXCHANGE,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
                wait=False,
            )

        results = await asyncio.gather(
            *(bus.publish(events) for events in rounds), *(single(e) for e in singles)
        )
        assert all(isinstance(r, aiormq.spec.Basic.Ack) for r in results[len(rounds) :])
        assert not channel.confirmations and not channel.message_id_delivery_tag
        taken: list[str | None] = []
        for _ in range(100):
            taken += [
                m.message_id for m in await take_all(sandbox.amqp_url, ORDER_SERVICE_QUEUE.name)
            ]
            if len(taken) >= 205:
                break
            await asyncio.sleep(0.05)
        assert sorted(map(str, taken)) == sorted(e.id for e in [*sum(rounds, []), *singles])
        for events in rounds:
            ids = [e.id for e in events]
            assert [i for i in taken if i in ids] == ids

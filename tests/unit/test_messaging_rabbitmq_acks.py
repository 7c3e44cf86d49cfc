"""RabbitMQBus.ack_all on channels of its own (aiormq's deliveries over a fake aiormq
channel): a batch is one multiple ack when nothing else waits below it, and a batch
holding deliveries of a channel lost since (a reconnect) still acks those of the live one."""

from __future__ import annotations

from types import SimpleNamespace

import aiormq
import pytest
from aiormq import spec
from aiormq.abc import DeliveredMessage

from orderstack.messaging.rabbitmq import RabbitMQBus, _AmqpDelivery
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE


class FakeChannel:
    def __init__(self) -> None:
        self.is_closed, self.acks = False, []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        if self.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        self.acks.append((tag, multiple))


def _delivery(bus: RabbitMQBus, channel: FakeChannel, tag: int) -> _AmqpDelivery:
    delivered = DeliveredMessage(
        delivery=spec.Basic.Deliver(
            consumer_tag="c", delivery_tag=tag, routing_key="order.created", exchange="x"
        ),
        header=SimpleNamespace(properties=spec.Basic.Properties()),
        body=b"{}",
        channel=channel,
    )
    return _AmqpDelivery(delivered, bus, PRODUCT_SERVICE_QUEUE)


async def test_a_batch_with_nothing_below_it_is_one_multiple_ack() -> None:
    bus, channel = RabbitMQBus("amqp://x"), FakeChannel()
    batch = [_delivery(bus, channel, tag) for tag in (1, 2, 3)]

    await bus.ack_all(batch)

    assert channel.acks == [(3, True)]


async def test_a_delivery_waiting_below_the_batch_makes_it_acked_one_by_one() -> None:
    bus, channel = RabbitMQBus("amqp://x"), FakeChannel()
    first, *rest = [_delivery(bus, channel, tag) for tag in (1, 2, 3)]

    await bus.ack_all(rest)

    assert channel.acks == [(2, False), (3, False)]  # the first is never settled by them


async def test_deliveries_of_a_lost_channel_do_not_stop_the_live_ones() -> None:
    bus, old, new = RabbitMQBus("amqp://x"), FakeChannel(), FakeChannel()
    batch = [_delivery(bus, old, tag) for tag in (1, 2)]
    old.is_closed = True  # the connection broke; the robust connection opened ``new``
    batch += [_delivery(bus, new, tag) for tag in (1, 2, 3)]

    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await bus.ack_all(batch)  # the lost ones: the broker gives them out again

    assert new.acks == [(3, True)]
    assert not bus._unsettled_on(new)

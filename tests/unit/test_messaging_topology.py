"""The topology: which events a queue of ours must take, and which are broadcasts."""

from __future__ import annotations

from typing import Any

import aiormq
import pytest

from orderstack.messaging.envelope import Event
from orderstack.messaging.rabbitmq import RabbitMQBus
from orderstack.messaging.topology import (
    ORDER_SERVICE_QUEUE,
    PRODUCT_SERVICE_QUEUE,
    ROUTED_EVENTS,
)


def test_the_order_queue_takes_only_the_answers() -> None:
    # product_created is no longer bound to it: the order service does not consume it.
    assert ORDER_SERVICE_QUEUE.routing_keys == ("order.qty_confirmed", "order.qty_failed")
    assert PRODUCT_SERVICE_QUEUE.routing_keys == (
        "order.created",
        "order.cancelled",
        "order.expired",
    )


def test_the_events_our_services_must_receive_are_the_order_flow() -> None:
    # Publishing one of these that no queue takes is a failure (the relay keeps it);
    # product_created is a broadcast, dropped when nobody listens.
    assert {
        "order.created",
        "order.cancelled",
        "order.expired",
        "order.qty_confirmed",
        "order.qty_failed",
    } == ROUTED_EVENTS


class RecordingChannel:
    """Stands in for the broker's side of the publishing channel: records each publish
    and confirms it."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bool]] = []

    async def get_underlay_channel(self) -> RecordingChannel:
        return self

    async def basic_publish(self, body: bytes, **options: Any) -> aiormq.spec.Basic.Ack:
        self.published.append((options["routing_key"], options["mandatory"]))
        return aiormq.spec.Basic.Ack()


@pytest.mark.parametrize(
    ("name", "mandatory"),
    [
        ("order.created", True),
        ("order.cancelled", True),
        ("order.qty_confirmed", True),
        ("order.qty_failed", True),
        ("product_created", False),
    ],
)
async def test_rabbitmq_publishes_mandatory_only_for_routed_events(
    name: str, mandatory: bool
) -> None:
    bus = RabbitMQBus("amqp://unused")
    channel = RecordingChannel()
    bus._exchange = object()  # type: ignore[assignment]  # started, as far as publish cares
    bus._publish_channel = channel  # type: ignore[assignment]

    await bus.publish([Event(name, {"orderId": 1})])

    assert channel.published == [(name, mandatory)]

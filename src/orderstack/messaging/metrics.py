"""What a service's messaging shows on ``/metrics``, read at scrape time from the counters
the relay and the consumer keep, one query on the outbox and the dead-letter queue's depth.
Each function is a reader for ``web.metrics.AppMetrics`` (the assembly registers them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.outbox import OutboxRelay
from orderstack.messaging.topology import QueueSpec
from orderstack.storage.types import utcnow


@runtime_checkable
class DeadLetterDepth(Protocol):
    """A bus that can say how many messages a consuming queue dead-lettered."""

    async def dead_letter_depth(self, queue: str) -> int: ...


def event_families(
    relay: OutboxRelay, consumer: EventConsumer, publishes: Iterable[str] = ()
) -> list[Metric]:
    """Events this process published (confirmed by the broker) and settled, by event. Each
    event the service ``publishes`` is there from the start, at 0: a replica that has not
    published one yet still shows the series."""
    published = CounterMetricFamily(
        "events_published", "Events published from the outbox (broker-confirmed)", labels=["event"]
    )
    counts = {event: 0 for event in publishes} | dict(relay.published_by_event)
    for event, count in sorted(counts.items()):
        published.add_metric([event], count)
    consumed = CounterMetricFamily(
        "events_consumed",
        "Deliveries settled by the consumer: applied, duplicate (already in the inbox) "
        "or dead_lettered",
        labels=["event", "outcome"],
    )
    for (event, outcome), count in consumer.settled.items():
        consumed.add_metric([event, outcome], count)
    return [published, consumed]


async def outbox_families(relay: OutboxRelay) -> list[Metric]:
    """The outbox backlog and the age of its oldest unsent event (0 when none waits)."""
    unsent, oldest = await relay.unsent()
    age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
    return [
        GaugeMetricFamily("outbox_unsent_events", "Outbox rows not yet published", value=unsent),
        GaugeMetricFamily(
            "outbox_oldest_unsent_age_seconds",
            "How long the oldest unsent outbox row has waited (0 when none waits)",
            value=age,
        ),
    ]


async def dead_letter_families(bus: object, queue: QueueSpec) -> list[Metric]:
    """The depth of the service's dead-letter queue; nothing for a bus that cannot tell."""
    if not isinstance(bus, DeadLetterDepth):
        return []
    depth = await bus.dead_letter_depth(queue.name)
    family = GaugeMetricFamily(
        "dead_letter_queue_messages",
        "Messages in the service's dead-letter queue, waiting for `orderstack dlq`",
        labels=["queue"],
    )
    family.add_metric([queue.dead_letter_queue], depth)
    return [family]


__all__ = ["DeadLetterDepth", "dead_letter_families", "event_families", "outbox_families"]

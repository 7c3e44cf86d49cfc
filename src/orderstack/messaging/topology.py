"""Exchanges and queues, declared the same way by every service on every (re)connect.

Each consuming service owns one durable queue bound to the routing keys of the events it
consumes (declared in orderstack/events.py), with a dead-letter queue beside it. Every
service declares the whole topology, so an event published before its consumer ever
started still has a queue to wait in.

Queues are quorum queues by default (replicated over a cluster's nodes, RabbitMQ 3.8+);
``QUEUE_TYPE=classic`` keeps classic ones for a broker that needs them. A queue's type
cannot change in place: ``orderstack migrate-queues`` (messaging/queue_migration.py) moves
existing queues to the configured type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from orderstack.events import Service, consumed_by

QueueType = Literal["classic", "quorum"]

EXCHANGE = "order.exchange"
DEAD_LETTER_EXCHANGE = "order.dlx"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    routing_keys: tuple[str, ...]

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"


def _consumer_queue(name: str, service: Service) -> QueueSpec:
    """``service``'s queue, bound to every event declared as consumed by it."""
    return QueueSpec(name, tuple(event.name for event in consumed_by(service)))


ORDER_SERVICE_QUEUE = _consumer_queue("order-service.events", Service.ORDERS)
PRODUCT_SERVICE_QUEUE = _consumer_queue("product-service.events", Service.PRODUCTS)
ALL_QUEUES = (ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE)
# Each service's queue (orderstack/events.py names who consumes what).
QUEUES: Mapping[Service, QueueSpec] = {
    Service.ORDERS: ORDER_SERVICE_QUEUE,
    Service.PRODUCTS: PRODUCT_SERVICE_QUEUE,
}

# Events one of our services must receive: publishing one that no queue takes is an error
# (the relay keeps it and retries). Any other event (a declaration without consumers) is a
# broadcast for whoever binds a queue to it; with nobody listening the broker drops it.
ROUTED_EVENTS = frozenset(key for spec in ALL_QUEUES for key in spec.routing_keys)

# The broker's own poison-message bound (quorum queues only): a message handed out this
# many times without an ack is dead-lettered by the broker (reason ``delivery_limit``).
# The consumer never returns a message on purpose (transient failures retry in process,
# unacked; others end dead-lettered by the consumer), so only a process or connection
# that dies while holding it counts: a node loss or a restart costs each message it held
# one delivery. The limit is high, a last resort against a message that crashes every
# process that takes it, not a retry policy.
DELIVERY_LIMIT = 50


def queue_arguments(spec: QueueSpec, queue_type: QueueType) -> dict[str, Any]:
    """The declare arguments of ``spec``'s work queue. Every declarer must pass the same
    ones: the broker refuses a redeclare whose arguments differ (PRECONDITION_FAILED)."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": spec.dead_letter_queue,
    }
    if queue_type == "quorum":
        arguments |= {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            # The broker's own dead-lettering (delivery limit, reject) confirmed by the
            # dead-letter queue's replicas instead of fire-and-forget; it needs this
            # overflow mode (with no length limit, nothing is ever refused).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return arguments


def dead_letter_queue_arguments(queue_type: QueueType) -> dict[str, Any]:
    """The declare arguments of every dead-letter queue (no dead-lettering of its own)."""
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else {}

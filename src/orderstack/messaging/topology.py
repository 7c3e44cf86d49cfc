"""Exchanges and queues, declared the same way by every service on every (re)connect.

Each consuming service owns one durable queue bound to the routing keys it handles, with a
dead-letter queue beside it. Every service declares the whole topology, so an event
published before its consumer ever started still has a queue to wait in.
"""

from __future__ import annotations

from dataclasses import dataclass

EXCHANGE = "order.exchange"
DEAD_LETTER_EXCHANGE = "order.dlx"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    routing_keys: tuple[str, ...]

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"


ORDER_SERVICE_QUEUE = QueueSpec("order-service.events", ("order.qty_confirmed", "order.qty_failed"))
PRODUCT_SERVICE_QUEUE = QueueSpec("product-service.events", ("order.created", "order.cancelled"))
ALL_QUEUES = (ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE)

# Events one of our services must receive: publishing one that no queue takes is an error
# (the relay keeps it and retries). Any other event, such as ``product_created``, is a
# broadcast for whoever binds a queue to it; with nobody listening the broker drops it.
# (The order service does not cache from ``product_created``: the product service caches
# a product when it creates it, and a late creation snapshot must never be written back
# over a cache entry that has since expired.)
ROUTED_EVENTS = frozenset(key for spec in ALL_QUEUES for key in spec.routing_keys)

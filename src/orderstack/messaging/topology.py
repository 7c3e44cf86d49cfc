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


ORDER_SERVICE_QUEUE = QueueSpec(
    "order-service.events", ("order.qty_confirmed", "order.qty_failed", "product_created")
)
PRODUCT_SERVICE_QUEUE = QueueSpec("product-service.events", ("order.created",))
ALL_QUEUES = (ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE)

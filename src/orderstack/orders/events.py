"""The events the order service publishes, as the wire carries them."""

from __future__ import annotations

from datetime import datetime

from orderstack import wire
from orderstack.messaging.envelope import Event
from orderstack.orders.domain import Order


def order_created_event(order: Order) -> Event:
    return Event(
        "order.created",
        {
            "orderId": order.id,
            "productId": order.product_id,
            "totalPrice": wire.money(order.total_price),
            "quantity": order.quantity,
            "timestamp": wire.timestamp(order.created_at),
        },
    )


def order_cancelled_event(order: Order, now: datetime) -> Event:
    return Event(
        "order.cancelled",
        {
            "orderId": order.id,
            "productId": order.product_id,
            "quantity": order.quantity,
            "timestamp": wire.timestamp(now),
        },
    )

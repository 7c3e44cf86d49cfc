"""The events the order service publishes, as the wire carries them.

Each event, its payload model included, is declared in orderstack/events.py; the builders
below construct that model and dump it, and the AsyncAPI document (``/asyncapi.json``) is
generated from the same models, so the two cannot drift.
"""

from __future__ import annotations

from datetime import datetime

from orderstack import wire
from orderstack.events import (
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_EXPIRED,
    OrderCancelled,
    OrderCreated,
    OrderExpired,
    OrderItem,
)
from orderstack.messaging.envelope import Event
from orderstack.orders.domain import Order


def _items(order: Order) -> list[OrderItem]:
    return [OrderItem(productId=line.product_id, quantity=line.quantity) for line in order.items]


def order_created_event(order: Order) -> Event:
    payload = OrderCreated(
        orderId=order.id,
        items=_items(order),
        productId=order.product_id,
        quantity=order.quantity,
        totalPrice=None if order.total_price is None else wire.money(order.total_price),
        agreedTotal=None if order.agreed_total is None else wire.money(order.agreed_total),
        timestamp=wire.timestamp(order.created_at),
    )
    return Event(ORDER_CREATED.name, payload.model_dump(exclude_none=True))


def order_cancelled_event(order: Order, now: datetime) -> Event:
    payload = OrderCancelled(
        orderId=order.id,
        items=_items(order),
        productId=order.product_id,
        quantity=order.quantity,
        timestamp=wire.timestamp(now),
    )
    return Event(ORDER_CANCELLED.name, payload.model_dump(exclude_none=True))


def order_expired_event(order: Order, now: datetime) -> Event:
    """A held order expired: the product service gives its units back, once."""
    expires_at = order.expires_at
    payload = OrderExpired(
        orderId=order.id,
        items=_items(order),
        productId=order.product_id,
        quantity=order.quantity,
        expiresAt=None if expires_at is None else wire.timestamp(expires_at),
        timestamp=wire.timestamp(now),
    )
    return Event(ORDER_EXPIRED.name, payload.model_dump(exclude_none=True))

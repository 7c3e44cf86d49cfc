"""The events the product service publishes, as the wire carries them.

Each event, its payload model included, is declared in orderstack/events.py; the builders
below construct that model and dump it, and the AsyncAPI document (``/asyncapi.json``) is
generated from the same models, so the two cannot drift.
"""

from __future__ import annotations

from datetime import datetime

from orderstack import wire
from orderstack.events import (
    CANCELLED_REASON,
    FAILURE_REASON,
    ORDER_QTY_CONFIRMED,
    ORDER_QTY_FAILED,
    PRODUCT_CREATED,
    FailureReason,
    OrderQtyConfirmed,
    OrderQtyFailed,
    ProductCreated,
)
from orderstack.messaging.envelope import Event
from orderstack.products.domain import Product, ReservationOutcome

__all__ = ["CANCELLED_REASON", "FAILURE_REASON", "product_created_event", "reservation_answer"]


def product_created_event(product: Product, now: datetime) -> Event:
    payload = ProductCreated(
        id=product.id,
        name=product.name,
        price=wire.money(product.price),
        qty=product.qty,
        timestamp=wire.timestamp(now),
    )
    return Event(PRODUCT_CREATED.name, payload.model_dump())


def reservation_answer(order_id: int, outcome: ReservationOutcome, now: datetime) -> Event:
    timestamp = wire.timestamp(now)
    if outcome is ReservationOutcome.CONFIRMED:
        confirmed = OrderQtyConfirmed(orderId=order_id, timestamp=timestamp)
        return Event(ORDER_QTY_CONFIRMED.name, confirmed.model_dump())
    reason: FailureReason = (
        CANCELLED_REASON if outcome is ReservationOutcome.CANCELLED else FAILURE_REASON
    )
    failed = OrderQtyFailed(orderId=order_id, reason=reason, timestamp=timestamp)
    return Event(ORDER_QTY_FAILED.name, failed.model_dump())

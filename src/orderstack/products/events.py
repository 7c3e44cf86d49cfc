"""The events the product service publishes, as the wire carries them."""

from __future__ import annotations

from datetime import datetime

from orderstack import wire
from orderstack.messaging.envelope import Event
from orderstack.products.domain import Product, ReservationOutcome

FAILURE_REASON = "product_not_found_or_unavailable"
CANCELLED_REASON = "cancelled"  # the order was cancelled before its stock was taken


def product_created_event(product: Product, now: datetime) -> Event:
    return Event(
        "product_created",
        {
            "id": product.id,
            "name": product.name,
            "price": wire.money(product.price),
            "qty": product.qty,
            "timestamp": wire.timestamp(now),
        },
    )


def reservation_answer(order_id: int, outcome: ReservationOutcome, now: datetime) -> Event:
    if outcome is ReservationOutcome.CONFIRMED:
        return Event("order.qty_confirmed", {"orderId": order_id, "timestamp": wire.timestamp(now)})
    reason = CANCELLED_REASON if outcome is ReservationOutcome.CANCELLED else FAILURE_REASON
    return Event(
        "order.qty_failed",
        {"orderId": order_id, "reason": reason, "timestamp": wire.timestamp(now)},
    )

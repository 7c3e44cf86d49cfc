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
    PRICE_CHANGED_REASON,
    PRODUCT_CREATED,
    TOTAL_OUT_OF_RANGE_REASON,
    FailureReason,
    OrderQtyConfirmed,
    OrderQtyFailed,
    PricedItem,
    ProductCreated,
    ShortItem,
)
from orderstack.messaging.envelope import Event
from orderstack.products.domain import Product, Refused, Reservation, ReservationOutcome

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


def reservation_answer(reservation: Reservation, now: datetime) -> Event:
    """The answer to an order: ``order.qty_confirmed`` with its priced lines and total, or
    ``order.qty_failed`` with the reason, the short lines and the catalog total (a
    reservation recorded before lines were priced answers without them)."""
    timestamp = wire.timestamp(now)
    total = reservation.total
    if reservation.outcome is ReservationOutcome.CONFIRMED:
        priced = all(line.unit_price is not None for line in reservation.lines)
        confirmed = OrderQtyConfirmed(
            orderId=reservation.order_id,
            items=[
                PricedItem(
                    productId=line.product_id,
                    quantity=line.quantity,
                    unitPrice=wire.money(line.unit_price),
                    lineTotal=wire.money(line.unit_price * line.quantity),
                )
                for line in reservation.lines
                if line.unit_price is not None
            ]
            if priced
            else None,
            totalPrice=wire.money(total) if total is not None else None,
            timestamp=timestamp,
        )
        return Event(ORDER_QTY_CONFIRMED.name, confirmed.model_dump(exclude_none=True))
    refusal = reservation.refusal
    reason: FailureReason
    if reservation.outcome is ReservationOutcome.CANCELLED:
        reason = CANCELLED_REASON
    elif refusal is None:
        reason = FAILURE_REASON
    else:
        reason = _REASONS[refusal.reason]
    catalog_total = refusal.catalog_total if refusal is not None else None
    failed = OrderQtyFailed(
        orderId=reservation.order_id,
        reason=reason,
        lines=[
            ShortItem(productId=s.product_id, requested=s.requested, available=s.available)
            for s in refusal.short
        ]
        if refusal is not None and refusal.short and reason == FAILURE_REASON
        else None,
        totalPrice=wire.money(catalog_total) if catalog_total is not None else None,
        timestamp=timestamp,
    )
    return Event(ORDER_QTY_FAILED.name, failed.model_dump(exclude_none=True))


_REASONS: dict[Refused, FailureReason] = {
    Refused.UNAVAILABLE: FAILURE_REASON,
    Refused.PRICE_CHANGED: PRICE_CHANGED_REASON,
    Refused.CANCELLED: CANCELLED_REASON,
    Refused.TOTAL_OUT_OF_RANGE: TOTAL_OUT_OF_RANGE_REASON,
}

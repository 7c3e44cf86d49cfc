"""The events the product service publishes, as the wire carries them.

Each payload is a model: the builders below construct it and dump it, and the AsyncAPI
document (``/asyncapi.json``) is generated from the same models, so the two cannot drift.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from orderstack import wire
from orderstack.messaging.envelope import Event
from orderstack.products.domain import MAX_QTY, Product, ReservationOutcome

FAILURE_REASON: Final = "product_not_found_or_unavailable"
CANCELLED_REASON: Final = "cancelled"  # the order was cancelled before its stock was taken
FailureReason = Literal["product_not_found_or_unavailable", "cancelled"]


class OrderQtyConfirmed(BaseModel):
    """The order's units were taken from the product's stock: the order is ``confirmed``."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    timestamp: wire.Timestamp = Field(description="When the units were taken")


class OrderQtyFailed(BaseModel):
    """The order took nothing: the product is unknown, deleted or short of units
    (``product_not_found_or_unavailable``), or the order had been cancelled first
    (``cancelled``). The order is ``failed``."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    reason: FailureReason = Field(
        description="Why nothing was taken; a consumer treats a value it does not know as a failure"
    )
    timestamp: wire.Timestamp = Field(description="When the order was refused")


class ProductCreated(BaseModel):
    """A product was created (a broadcast: no service of ours consumes it; with no queue
    bound to it the broker drops it)."""

    model_config = ConfigDict(extra="forbid")
    id: wire.Id
    name: str
    price: wire.Money
    qty: Annotated[int, Field(ge=0, le=MAX_QTY, description="Units in stock")]
    timestamp: wire.Timestamp = Field(description="When the product was created")


# Event name -> payload model: every event this service publishes.
PUBLISHED: dict[str, type[BaseModel]] = {
    "order.qty_confirmed": OrderQtyConfirmed,
    "order.qty_failed": OrderQtyFailed,
    "product_created": ProductCreated,
}


def product_created_event(product: Product, now: datetime) -> Event:
    payload = ProductCreated(
        id=product.id,
        name=product.name,
        price=wire.money(product.price),
        qty=product.qty,
        timestamp=wire.timestamp(now),
    )
    return Event("product_created", payload.model_dump())


def reservation_answer(order_id: int, outcome: ReservationOutcome, now: datetime) -> Event:
    timestamp = wire.timestamp(now)
    if outcome is ReservationOutcome.CONFIRMED:
        confirmed = OrderQtyConfirmed(orderId=order_id, timestamp=timestamp)
        return Event("order.qty_confirmed", confirmed.model_dump())
    reason: FailureReason = (
        CANCELLED_REASON if outcome is ReservationOutcome.CANCELLED else FAILURE_REASON
    )
    failed = OrderQtyFailed(orderId=order_id, reason=reason, timestamp=timestamp)
    return Event("order.qty_failed", failed.model_dump())

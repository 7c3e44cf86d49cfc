"""The events the order service publishes, as the wire carries them.

Each payload is a model: the builders below construct it and dump it, and the AsyncAPI
document (``/asyncapi.json``) is generated from the same models, so the two cannot drift.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from orderstack import wire
from orderstack.messaging.envelope import Event
from orderstack.orders.domain import MAX_ORDER_QUANTITY, Order

_Quantity = Annotated[int, Field(ge=1, le=MAX_ORDER_QUANTITY, description="Units ordered")]


class OrderCreated(BaseModel):
    """An order was placed (``pending``): the product service takes its units, all or none,
    and answers ``order.qty_confirmed`` or ``order.qty_failed``. Sent again, with a new
    event id, while the order stays pending too long."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    productId: wire.Id
    totalPrice: wire.Money
    quantity: _Quantity
    timestamp: wire.Timestamp = Field(description="When the order was placed")


class OrderCancelled(BaseModel):
    """An order was cancelled (it was ``pending`` or ``confirmed``): the product service gives
    back the units it had taken, once; one it has not seen yet will take nothing. Not
    answered."""

    model_config = ConfigDict(extra="forbid")
    orderId: wire.Id
    productId: wire.Id
    quantity: _Quantity
    timestamp: wire.Timestamp = Field(description="When the order was cancelled")


# Event name -> payload model: every event this service publishes.
PUBLISHED: dict[str, type[BaseModel]] = {
    "order.created": OrderCreated,
    "order.cancelled": OrderCancelled,
}


def order_created_event(order: Order) -> Event:
    payload = OrderCreated(
        orderId=order.id,
        productId=order.product_id,
        totalPrice=wire.money(order.total_price),
        quantity=order.quantity,
        timestamp=wire.timestamp(order.created_at),
    )
    return Event("order.created", payload.model_dump())


def order_cancelled_event(order: Order, now: datetime) -> Event:
    payload = OrderCancelled(
        orderId=order.id,
        productId=order.product_id,
        quantity=order.quantity,
        timestamp=wire.timestamp(now),
    )
    return Event("order.cancelled", payload.model_dump())

"""Orders and their life: pending, then confirmed or failed, once. No framework imports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from orderstack import wire
from orderstack.messaging.envelope import Event


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class OrderNotFound(Exception):
    def __init__(self, order_id: int) -> None:
        super().__init__(f"order {order_id} not found")
        self.order_id = order_id


class ProductNotFound(Exception):
    """The product to order does not exist (or was deleted)."""


class CatalogUnavailable(Exception):
    """The product could not be checked: not cached and the product service did not answer."""


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    product_id: int
    total_price: Decimal
    status: OrderStatus
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewOrder:
    """An order to store: what the client asked for, and its idempotency key if it sent one."""

    product_id: int
    total_price: Decimal
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class SettleOrder:
    """The product service's answer for one order (``order.qty_confirmed`` / ``_failed``)."""

    order_id: int
    status: OrderStatus  # CONFIRMED or FAILED, never PENDING


def order_created_event(order: Order) -> Event:
    return Event(
        "order.created",
        {
            "orderId": order.id,
            "productId": order.product_id,
            "totalPrice": wire.money(order.total_price),
            "timestamp": wire.timestamp(order.created_at),
        },
    )

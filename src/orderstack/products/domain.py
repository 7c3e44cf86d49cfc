"""Products and the outcome of taking stock for an order. No framework imports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from orderstack import wire
from orderstack.cache.port import CachedProduct
from orderstack.messaging.envelope import Event

FAILURE_REASON = "product_not_found_or_unavailable"


class ProductNotFound(Exception):
    def __init__(self, product_id: int) -> None:
        super().__init__(f"Product {product_id} not found")
        self.product_id = product_id


class ReservationOutcome(StrEnum):
    CONFIRMED = "confirmed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    name: str
    price: Decimal
    qty: int
    created_at: datetime
    updated_at: datetime
    version: int

    def to_cache(self) -> CachedProduct:
        return CachedProduct(
            id=self.id,
            version=self.version,
            name=self.name,
            price=self.price,
            qty=self.qty,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    @classmethod
    def from_cache(cls, entry: CachedProduct) -> Product | None:
        """The product an entry describes; None for a tombstone or an incomplete entry."""
        if entry.deleted or entry.created_at is None or entry.updated_at is None:
            return None
        return cls(
            id=entry.id,
            name=entry.name,
            price=entry.price,
            qty=entry.qty,
            created_at=entry.created_at,
            updated_at=entry.updated_at,
            version=entry.version,
        )


@dataclass(frozen=True, slots=True)
class StockTaken:
    """What taking stock did to one product: the units it gave, and the product after."""

    units: int
    product: Product


@dataclass(frozen=True, slots=True)
class ReserveStock:
    """One unit of stock asked for by an order (from ``order.created``)."""

    order_id: int
    product_id: int


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
    return Event(
        "order.qty_failed",
        {"orderId": order_id, "reason": FAILURE_REASON, "timestamp": wire.timestamp(now)},
    )

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

# The largest stock a product can hold (products.qty is a 32-bit INT).
MAX_QTY = 2_147_483_647

# Reasons the service itself writes in the stock adjustments ledger.
CREATED_REASON = "created"
PATCH_REASON = "patch"


class ProductNotFound(Exception):
    def __init__(self, product_id: int) -> None:
        super().__init__(f"Product {product_id} not found")
        self.product_id = product_id


class VersionMismatch(Exception):
    """The client's precondition (``If-Match``) names a version that is no longer current."""

    def __init__(self, product_id: int, current_version: int) -> None:
        super().__init__(
            f"Product {product_id} has changed (now at version {current_version}); "
            "read it again and retry"
        )
        self.product_id, self.current_version = product_id, current_version


class InsufficientStock(Exception):
    """An adjustment would take the stock below zero."""

    def __init__(self, product_id: int, qty: int, delta: int) -> None:
        super().__init__(
            f"Product {product_id} has {qty} units in stock; an adjustment of {delta} "
            "would take it below 0"
        )
        self.product_id, self.qty, self.delta = product_id, qty, delta


class StockLimitExceeded(Exception):
    """An adjustment would take the stock above MAX_QTY."""

    def __init__(self, product_id: int, qty: int, delta: int) -> None:
        super().__init__(
            f"Product {product_id} has {qty} units in stock; an adjustment of {delta} "
            f"would take it above {MAX_QTY}"
        )
        self.product_id, self.qty, self.delta = product_id, qty, delta


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

    def qty_after(self, delta: int) -> int:
        """The stock after adding ``delta`` (negative: removing units). Raises
        InsufficientStock below zero, StockLimitExceeded above MAX_QTY."""
        qty = self.qty + delta
        if qty < 0:
            raise InsufficientStock(self.id, self.qty, delta)
        if qty > MAX_QTY:
            raise StockLimitExceeded(self.id, self.qty, delta)
        return qty

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
class StockAdjustment:
    """One entry of the stock ledger: a change of a product's qty other than an order's
    reservation (creation, restock, correction, PATCH of qty)."""

    id: int
    product_id: int
    delta: int
    reason: str
    qty_after: int
    created_at: datetime


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

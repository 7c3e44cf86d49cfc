"""Products, their stock rules, and the outcome of taking stock for orders.

Pure: no I/O, no framework, no adapter; the rules here are tested without a database and
the repositories only lock, read and write what these functions decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

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

    def take(self, units: int, now: datetime) -> Product:
        """The product after ``units`` were taken for orders (a new version)."""
        if not 0 < units <= self.qty:
            raise ValueError(f"cannot take {units} of {self.qty} units of product {self.id}")
        return replace(self, qty=self.qty - units, version=self.version + 1, updated_at=now)

    def qty_after(self, delta: int) -> int:
        """The stock after adding ``delta`` (negative: removing units). Raises
        InsufficientStock below zero, StockLimitExceeded above MAX_QTY."""
        qty = self.qty + delta
        if qty < 0:
            raise InsufficientStock(self.id, self.qty, delta)
        if qty > MAX_QTY:
            raise StockLimitExceeded(self.id, self.qty, delta)
        return qty


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
class ReserveStock:
    """One unit of stock asked for by an order (from ``order.created``)."""

    order_id: int
    product_id: int


@dataclass(frozen=True, slots=True)
class Allocation:
    """What taking stock for a batch of orders decided."""

    outcomes: list[tuple[ReserveStock, ReservationOutcome]]  # one per order, in request order
    taken: dict[int, int]  # units taken per product (products that gave none left out)


def allocate(stock: Mapping[int, int], requests: Sequence[ReserveStock]) -> Allocation:
    """Give each order one unit of its product from ``stock`` (units per product, as the
    locked rows hold them): within a product the oldest orders (lowest ids) first, never
    more than there is. An order whose product is not in ``stock`` (unknown or deleted)
    fails. An order asked for twice in one batch is decided once, by its first request."""
    left = dict(stock)
    unique: dict[int, ReserveStock] = {}
    for request in requests:
        unique.setdefault(request.order_id, request)
    decided: dict[int, ReservationOutcome] = {}
    for request in sorted(unique.values(), key=lambda r: (r.product_id, r.order_id)):
        if left.get(request.product_id, 0) > 0:
            left[request.product_id] -= 1
            decided[request.order_id] = ReservationOutcome.CONFIRMED
        else:
            decided[request.order_id] = ReservationOutcome.FAILED
    taken = {pid: stock[pid] - units for pid, units in left.items() if units < stock[pid]}
    return Allocation([(r, decided[r.order_id]) for r in unique.values()], taken)

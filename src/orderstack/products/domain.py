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

from orderstack.quantities import MAX_QTY as MAX_QTY

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
    """An adjustment would take the stock, with the units confirmed orders hold, above
    MAX_QTY."""

    def __init__(self, product_id: int, qty: int, delta: int, held: int = 0) -> None:
        holding = f" and confirmed orders hold {held} that a cancel gives back" if held else ""
        super().__init__(
            f"Product {product_id} has {qty} units in stock{holding}; an adjustment of "
            f"{delta} would take {'them' if held else 'it'} above {MAX_QTY}"
        )
        self.product_id, self.qty, self.delta, self.held = product_id, qty, delta, held


class ReservationOutcome(StrEnum):
    """What an order holds of its product: ``confirmed`` holds its units; ``failed`` and
    ``cancelled`` hold none (a cancelled order gave back what it held, if anything)."""

    CONFIRMED = "confirmed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class NewProduct:
    """A product to create: it opens with ``qty`` units (its ledger's opening entry)."""

    name: str
    price: Decimal
    qty: int


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    name: str
    price: Decimal
    qty: int
    created_at: datetime
    updated_at: datetime
    version: int
    deleted: bool = False  # soft-deleted: gives no stock, but takes back cancelled units

    def take(self, units: int, now: datetime) -> Product:
        """The product after ``units`` were taken for orders (a new version)."""
        if not 0 < units <= self.qty:
            raise ValueError(f"cannot take {units} of {self.qty} units of product {self.id}")
        return replace(self, qty=self.qty - units, version=self.version + 1, updated_at=now)

    def give_back(self, units: int, now: datetime) -> Product:
        """The product after ``units`` taken for a cancelled order came back (a new version).
        Raises StockLimitExceeded above MAX_QTY."""
        if units <= 0:
            raise ValueError(f"cannot give back {units} units of product {self.id}")
        return replace(self, qty=self.qty_after(units), version=self.version + 1, updated_at=now)

    def qty_after(self, delta: int, held: int = 0) -> int:
        """The stock after adding ``delta`` (negative: removing units). Raises
        InsufficientStock below zero, StockLimitExceeded above MAX_QTY.

        ``held``: the units confirmed orders hold of this product. They count toward
        MAX_QTY, because a cancel gives them back and must always be able to: the stock
        plus the units held never exceeds MAX_QTY (a take or a give-back moves units
        between the two and leaves the sum as it was)."""
        qty = self.qty + delta
        if qty < 0:
            raise InsufficientStock(self.id, self.qty, delta)
        # Only a change that adds units is refused: a product above the limit already
        # (restocked before this rule) may still be corrected down or left as it is.
        if qty > MAX_QTY or (delta > 0 and qty + held > MAX_QTY):
            raise StockLimitExceeded(self.id, self.qty, delta, held)
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
    """The units of stock an order asks for (from ``order.created``)."""

    order_id: int
    product_id: int
    quantity: int = 1  # absent from a seed-style order.created: one unit


@dataclass(frozen=True, slots=True)
class CancelReservation:
    """An order cancelled by its client (from ``order.cancelled``): its units come back."""

    order_id: int
    product_id: int
    quantity: int = 1


@dataclass(frozen=True, slots=True)
class Reservation:
    """An order as the product service knows it (a row of the ``stock_reservations``
    ledger): the units it asked for and what it holds of them. A confirmed reservation
    holds ``quantity`` units; a failed or cancelled one holds none."""

    order_id: int
    product_id: int
    quantity: int
    outcome: ReservationOutcome

    @property
    def units_held(self) -> int:
        return self.quantity if self.outcome is ReservationOutcome.CONFIRMED else 0


@dataclass(frozen=True, slots=True)
class Allocation:
    """What taking stock for a batch of orders decided."""

    outcomes: list[tuple[ReserveStock, ReservationOutcome]]  # one per order, in request order
    taken: dict[int, int]  # units taken per product (products that gave none left out)


def allocate(stock: Mapping[int, int], requests: Sequence[ReserveStock]) -> Allocation:
    """Give each order all the units it asks for from ``stock`` (units per product, as the
    locked rows hold them), or none: all or nothing per order, never more than there is.

    Within a product the oldest orders (lowest ids) go first. An order that does not fit
    in what is left fails and takes nothing; a later, smaller order may still fit (the
    units are not held back for the one that failed). An order whose product is not in
    ``stock`` (unknown or deleted) fails. An order asked for twice in one batch is decided
    once, by its first request."""
    left = dict(stock)
    unique: dict[int, ReserveStock] = {}
    for request in requests:
        unique.setdefault(request.order_id, request)
    decided: dict[int, ReservationOutcome] = {}
    for request in sorted(unique.values(), key=lambda r: (r.product_id, r.order_id)):
        if 0 < request.quantity <= left.get(request.product_id, 0):
            left[request.product_id] -= request.quantity
            decided[request.order_id] = ReservationOutcome.CONFIRMED
        else:
            decided[request.order_id] = ReservationOutcome.FAILED
    taken = {pid: stock[pid] - units for pid, units in left.items() if units < stock[pid]}
    return Allocation([(r, decided[r.order_id]) for r in unique.values()], taken)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What cancelling a batch of orders decided."""

    reservations: list[Reservation]  # each order whose reservation changed, as it is now
    returned: dict[int, int]  # units given back per product (products given none left out)


def cancel(known: Mapping[int, Reservation], requests: Sequence[CancelReservation]) -> Cancellation:
    """Cancel each order once. ``known``: the reservations already recorded, by order id.

    A confirmed order gives back the units it holds (its recorded quantity, to its recorded
    product); a failed order holds nothing and is only marked cancelled; an order already
    cancelled changes nothing (a duplicated cancellation). An order not seen yet gets a
    cancelled reservation holding nothing, so that its ``order.created``, when it comes,
    takes nothing."""
    changed: dict[int, Reservation] = {}
    returned: dict[int, int] = {}
    for request in requests:
        before = changed.get(request.order_id) or known.get(request.order_id)
        if before is None:
            before = Reservation(
                request.order_id, request.product_id, request.quantity, ReservationOutcome.FAILED
            )
        if before.outcome is ReservationOutcome.CANCELLED:
            continue
        if before.units_held:
            returned[before.product_id] = returned.get(before.product_id, 0) + before.units_held
        changed[request.order_id] = replace(before, outcome=ReservationOutcome.CANCELLED)
    return Cancellation(list(changed.values()), returned)

"""Products, their stock rules, and the outcome of taking stock for orders.

Pure: no I/O, no framework, no adapter; the rules here are tested without a database and
the repositories only lock, read and write what these functions decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TypedDict

from orderstack.quantities import MAX_MONEY_TEXT
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


class ProductChanges(TypedDict, total=False):
    """A partial update of a product (``PATCH /products/{id}``): the fields given, each
    with its new value; absent fields are left as they are."""

    name: str
    price: Decimal
    qty: int


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


class Refused(StrEnum):
    """Why an order took nothing (``order.qty_failed``'s ``reason``)."""

    UNAVAILABLE = "product_not_found_or_unavailable"  # a line unknown, deleted or short
    PRICE_CHANGED = "price_changed"  # the catalog total differs from the agreed one
    CANCELLED = "cancelled"  # the order was cancelled before its stock was taken
    TOTAL_OUT_OF_RANGE = "total_out_of_range"  # the catalog total does not fit in money


# The largest amount a money column holds (DECIMAL(12,2)).
MAX_MONEY = Decimal(MAX_MONEY_TEXT)


@dataclass(frozen=True, slots=True)
class StockLine:
    """Units of one product an order asks for or holds (its lines for that product summed),
    and the unit price they were taken at once priced."""

    product_id: int
    quantity: int
    unit_price: Decimal | None = None

    @property
    def line_total(self) -> Decimal | None:
        return None if self.unit_price is None else self.unit_price * self.quantity


def summed(lines: Sequence[StockLine]) -> tuple[StockLine, ...]:
    """One line per product, in product-id order, its quantities summed: a product on two
    lines of an order is one demand (the order takes both or neither)."""
    units: dict[int, int] = {}
    prices: dict[int, Decimal | None] = {}
    for line in lines:
        units[line.product_id] = units.get(line.product_id, 0) + line.quantity
        prices.setdefault(line.product_id, line.unit_price)
    return tuple(StockLine(pid, units[pid], prices[pid]) for pid in sorted(units))


def _lines_of(
    product_id: int | None, quantity: int, lines: tuple[StockLine, ...]
) -> tuple[StockLine, ...]:
    if lines:
        return summed(lines)
    if product_id is None:
        raise ValueError("an order names a product or lines")
    return (StockLine(product_id, quantity),)


def _normalise(order: ReserveStock | CancelReservation | Reservation) -> None:
    """Set ``lines`` (summed) and the shorthand fields from each other, so that the two
    ways of writing an order are one value: ``product_id`` is the product of a one-line
    order (None for several lines), ``quantity`` its units in all."""
    lines = _lines_of(order.product_id, order.quantity, order.lines)
    object.__setattr__(order, "lines", lines)
    object.__setattr__(order, "product_id", lines[0].product_id if len(lines) == 1 else None)
    object.__setattr__(order, "quantity", sum(line.quantity for line in lines))


@dataclass(frozen=True, slots=True)
class ReserveStock:
    """The units of stock an order asks for (from ``order.created``): its ``lines``, or the
    one-line shorthand ``product_id`` and ``quantity`` (a seed-style event: one unit).

    ``agreed_total``: the total its client agreed to; the order takes nothing unless the
    catalog total of its lines equals it. None: priced by the catalog, unchecked."""

    order_id: int
    product_id: int | None = None
    quantity: int = 1
    lines: tuple[StockLine, ...] = ()
    agreed_total: Decimal | None = None

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, slots=True)
class CancelReservation:
    """An order cancelled by its client (from ``order.cancelled``): the units it holds come
    back. Its lines matter only for an order not seen yet (it will take nothing)."""

    order_id: int
    product_id: int | None = None
    quantity: int = 1
    lines: tuple[StockLine, ...] = ()

    def __post_init__(self) -> None:
        _normalise(self)


@dataclass(frozen=True, slots=True)
class ShortLine:
    """A line an order could not have: its product, the units asked, the units left (0 for
    a product unknown or deleted)."""

    product_id: int
    requested: int
    available: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an order took nothing, as its ``order.qty_failed`` tells it."""

    reason: Refused
    short: tuple[ShortLine, ...] = ()
    catalog_total: Decimal | None = None  # the catalog's total, when every line is known


@dataclass(frozen=True, slots=True)
class Reservation:
    """An order as the product service knows it (a row of the ``stock_reservations``
    ledger and its lines): what it asked for and what it holds. A confirmed reservation
    holds its lines' units, priced; a failed or cancelled one holds none. The one-line
    shorthand (``product_id``, ``quantity``) builds ``lines`` as ``ReserveStock`` does."""

    order_id: int
    product_id: int | None
    quantity: int
    outcome: ReservationOutcome
    lines: tuple[StockLine, ...] = ()
    refusal: Refusal | None = None

    def __post_init__(self) -> None:
        if self.lines or self.product_id is not None:  # else: holds nothing, lines not kept
            _normalise(self)

    @property
    def held(self) -> dict[int, int]:
        """Units held per product (none unless confirmed)."""
        if self.outcome is not ReservationOutcome.CONFIRMED:
            return {}
        return {line.product_id: line.quantity for line in self.lines}

    @property
    def units_held(self) -> int:
        return sum(self.held.values())

    @property
    def total(self) -> Decimal | None:
        """The catalog total of its priced lines; None while a line is unpriced."""
        totals = [line.line_total for line in self.lines]
        if any(total is None for total in totals):
            return None
        return sum((t for t in totals if t is not None), Decimal(0))


def reservation(
    order_id: int,
    lines: Sequence[StockLine],
    outcome: ReservationOutcome,
    refusal: Refusal | None = None,
) -> Reservation:
    """A reservation of these lines (a one-line one keeps the shorthand fields)."""
    merged = summed(lines)
    one = merged[0] if len(merged) == 1 else None
    return Reservation(
        order_id,
        one.product_id if one else None,
        one.quantity if one else sum(line.quantity for line in merged),
        outcome,
        merged,
        refusal,
    )


@dataclass(frozen=True, slots=True)
class Allocation:
    """What taking stock for a batch of orders decided."""

    outcomes: list[tuple[ReserveStock, ReservationOutcome]]  # one per order, in request order
    taken: dict[int, int]  # units taken per product (products that gave none left out)
    # Each order's reservation as decided: priced lines, or the refusal.
    reservations: dict[int, Reservation] = field(default_factory=dict)


def allocate(
    stock: Mapping[int, int],
    requests: Sequence[ReserveStock],
    prices: Mapping[int, Decimal] | None = None,
) -> Allocation:
    """Give each order all the units of all its lines from ``stock`` (units per product, as
    the locked rows hold them), or none: all or nothing per order, across its products,
    never more than there is. ``prices``: each product's unit price (as its locked row
    holds it); the lines of an order are priced from it (without them, nothing is priced
    or checked).

    Orders go oldest (lowest id) first. An order with a line that does not fit in what is
    left fails and takes nothing, and its refusal names each short line (a product that is
    not in ``stock``, unknown or deleted, has 0 left); a later, smaller order may still fit.
    An order whose ``agreed_total`` differs from its catalog total fails with
    ``price_changed`` and takes nothing. An order asked for twice in one batch is decided
    once, by its first request."""
    prices = prices or {}
    left = dict(stock)
    unique: dict[int, ReserveStock] = {}
    for request in requests:
        unique.setdefault(request.order_id, request)
    decided: dict[int, Reservation] = {}
    for request in sorted(unique.values(), key=lambda r: r.order_id):
        short = tuple(
            ShortLine(line.product_id, line.quantity, left.get(line.product_id, 0))
            for line in request.lines
            if not 0 < line.quantity <= left.get(line.product_id, 0)
        )
        priced = tuple(
            replace(line, unit_price=prices.get(line.product_id)) for line in request.lines
        )
        total: Decimal | None = None
        if all(line.unit_price is not None for line in priced):
            total = sum((line.line_total or Decimal(0) for line in priced), Decimal(0))
        refusal: Refusal | None = None
        if short:
            # The catalog total only when money holds it: the answer carries it, and the
            # order service refuses an amount past DECIMAL(12,2) (the order would stay pending).
            shown = total if total is not None and total <= MAX_MONEY else None
            refusal = Refusal(Refused.UNAVAILABLE, short, shown)
        elif total is not None and total > MAX_MONEY:
            refusal = Refusal(Refused.TOTAL_OUT_OF_RANGE, (), None)
        elif total is not None and request.agreed_total not in (None, total):
            refusal = Refusal(Refused.PRICE_CHANGED, (), total)
        if refusal is not None:
            decided[request.order_id] = reservation(
                request.order_id, request.lines, ReservationOutcome.FAILED, refusal
            )
            continue
        for line in request.lines:
            left[line.product_id] -= line.quantity
        decided[request.order_id] = reservation(
            request.order_id, priced, ReservationOutcome.CONFIRMED
        )
    taken = {pid: stock[pid] - units for pid, units in left.items() if units < stock[pid]}
    return Allocation([(r, decided[r.order_id].outcome) for r in unique.values()], taken, decided)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What cancelling a batch of orders decided."""

    reservations: list[Reservation]  # each order whose reservation changed, as it is now
    returned: dict[int, int]  # units given back per product (products given none left out)


def cancel(known: Mapping[int, Reservation], requests: Sequence[CancelReservation]) -> Cancellation:
    """Cancel each order once. ``known``: the reservations already recorded, by order id.

    A confirmed order gives back the units it holds (each of its recorded lines, to its
    product); a failed order holds nothing and is only marked cancelled; an order already
    cancelled changes nothing (a duplicated cancellation). An order not seen yet gets a
    cancelled reservation holding nothing, so that its ``order.created``, when it comes,
    takes nothing."""
    changed: dict[int, Reservation] = {}
    returned: dict[int, int] = {}
    for request in requests:
        before = changed.get(request.order_id) or known.get(request.order_id)
        if before is None:
            before = reservation(request.order_id, request.lines, ReservationOutcome.FAILED)
        if before.outcome is ReservationOutcome.CANCELLED:
            continue
        for product_id, units in before.held.items():
            returned[product_id] = returned.get(product_id, 0) + units
        changed[request.order_id] = replace(before, outcome=ReservationOutcome.CANCELLED)
    return Cancellation(list(changed.values()), returned)

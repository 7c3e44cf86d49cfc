"""Orders and their life: pending, then confirmed, failed or cancelled, once; an order
placed as a hold goes from pending to reserved, then confirmed by its client, expired or
cancelled, once.

Pure: no I/O, no framework, no adapter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from orderstack.quantities import MAX_ORDER_LINES as MAX_ORDER_LINES
from orderstack.quantities import MAX_ORDER_QUANTITY as MAX_ORDER_QUANTITY


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A held order whose units the product service took, waiting for its client's confirm
    # until its ``expires_at``.
    RESERVED = "reserved"
    # A reserved order not confirmed in time: its units went back.
    EXPIRED = "expired"


# An order's life: it leaves pending once, for good; a confirmed order may still be
# cancelled (its units go back). A held order's taken units make it reserved (never
# confirmed by the product service's answer: its client confirms it); a reserved order is
# confirmed, expires or is cancelled, once. Failed, cancelled and expired are final;
# nothing moves back.
_MOVES: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset(
        {OrderStatus.CONFIRMED, OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.RESERVED}
    ),
    OrderStatus.RESERVED: frozenset(
        {OrderStatus.CONFIRMED, OrderStatus.EXPIRED, OrderStatus.CANCELLED}
    ),
    OrderStatus.CONFIRMED: frozenset({OrderStatus.CANCELLED}),
}
# The statuses in which an order holds the units the product service took for it.
HOLDING: frozenset[OrderStatus] = frozenset({OrderStatus.CONFIRMED, OrderStatus.RESERVED})
# A hold's bounds, in seconds (``hold_seconds``, ``ORDER_HOLD_SECONDS``).
MIN_HOLD_SECONDS, MAX_HOLD_SECONDS = 5, 86_400
MAX_PAYMENT_REFERENCE = 128


def can_move(current: OrderStatus, target: OrderStatus) -> bool:
    return target in _MOVES.get(current, frozenset())


def moves_into(target: OrderStatus) -> frozenset[OrderStatus]:
    """The statuses an order may be in to move to ``target`` (empty: nothing may)."""
    return frozenset(status for status, targets in _MOVES.items() if target in targets)


class OrderNotFound(Exception):
    def __init__(self, order_id: int) -> None:
        super().__init__(f"order {order_id} not found")
        self.order_id = order_id


class OrderNotCancellable(Exception):
    """The order's status does not allow a cancellation (it failed: nothing to give back)."""

    def __init__(self, order_id: int, status: OrderStatus) -> None:
        super().__init__(f"order {order_id} is {status} and cannot be cancelled")
        self.order_id, self.status = order_id, status


class OrderNotReserved(Exception):
    """A confirm of an order that is not reserved (pending, failed, cancelled)."""

    def __init__(self, order_id: int, status: OrderStatus) -> None:
        super().__init__(f"order {order_id} is {status}, not reserved")
        self.order_id, self.status = order_id, status


class OrderExpired(Exception):
    """A confirm that came after the order's hold expired (its units went back)."""

    def __init__(self, order: Order) -> None:
        super().__init__(f"order {order.id} expired at {order.expires_at}")
        self.order = order


class UnknownProduct(Exception):
    """A product to order does not exist (or was deleted)."""

    def __init__(self, *product_ids: int) -> None:
        super().__init__(", ".join(f"product {pid} not found" for pid in product_ids))
        self.product_ids = product_ids


class CatalogUnavailable(Exception):
    """The product could not be checked: not cached and the product service did not answer."""


class IdempotencyKeyReused(Exception):
    """An idempotency key came back with a different request body than its first use."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"idempotency key {request_id!r} was used with a different request")
        self.request_id = request_id


class PriceCheck(StrEnum):
    """What a client's ``total_price`` is (``ORDER_PRICE_CHECK``)."""

    STRICT = "strict"  # the total the client agreed to: the order fails unless it is the catalog's
    OFF = "off"  # recorded as sent (the seed's behaviour); the catalog prices the lines beside it


@dataclass(frozen=True, slots=True)
class OrderLine:
    """Units of a product, and once the product service reserved them, the unit price."""

    product_id: int
    quantity: int
    unit_price: Decimal | None = None

    @property
    def line_total(self) -> Decimal | None:
        return None if self.unit_price is None else self.unit_price * self.quantity


@dataclass(frozen=True, slots=True)
class ShortLine:
    """A line the order could not have: product, units asked, units left."""

    product_id: int
    requested: int
    available: int


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an order failed, as the product service said: its reason (None: it gave none),
    the short lines, and the catalog total (a ``price_changed`` failure carries it, so the
    client can order again at that total)."""

    reason: str | None
    short: tuple[ShortLine, ...] = ()
    catalog_total: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    items: tuple[OrderLine, ...]  # as the client sent them, in its order
    total_price: Decimal | None  # the client's, else the catalog's once priced (None until)
    status: OrderStatus
    created_at: datetime
    # The total the client agreed to, checked by the product service (strict price check);
    # None: not checked.
    agreed_total: Decimal | None = None
    failure: Failure | None = None
    # The customer who placed it (its token's subject); None: placed without one (auth off,
    # or before orders had owners).
    customer_id: str | None = None
    # Placed as a hold: how long its units stay reserved once taken (None: no hold).
    hold_seconds: int | None = None
    # When a reserved order expires (database clock); None until reserved.
    expires_at: datetime | None = None
    payment_reference: str | None = None

    @property
    def product_id(self) -> int | None:
        """A one-line order's product (the seed's field); None for several lines."""
        return self.items[0].product_id if len(self.items) == 1 else None

    @property
    def quantity(self) -> int | None:
        """A one-line order's units; None for several lines."""
        return self.items[0].quantity if len(self.items) == 1 else None


@dataclass(frozen=True, slots=True)
class NewOrder:
    """An order to store: what the client asked for, and its idempotency key if it sent one."""

    items: tuple[OrderLine, ...]
    total_price: Decimal | None
    request_id: str | None = None
    request_fingerprint: str | None = None  # see request_fingerprint(); set with request_id
    agreed_total: Decimal | None = None
    customer_id: str | None = None
    hold_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class SettleOrder:
    """The product service's answer for one order (``order.qty_confirmed`` / ``_failed``):
    the priced lines and total of a confirmed one, why a failed one failed (both absent
    from the seed's answers)."""

    order_id: int
    status: OrderStatus  # CONFIRMED or FAILED, never PENDING
    priced: tuple[OrderLine, ...] = ()  # one per product, summed, priced
    total: Decimal | None = None
    failure: Failure | None = None


def request_fingerprint(
    items: Sequence[OrderLine],
    total_price: Decimal | None,
    customer_id: str | None = None,
    hold_seconds: int | None = None,
) -> str:
    """The sha256 (hex) of a create-order request in canonical form, stored beside its
    idempotency key: a replay with the same key must carry the same fingerprint.

    Equal requests give equal fingerprints however they were written: the price is
    normalised (``1500``, ``1500.0`` and ``1500.00`` are one price), a one-line order is one
    request whether sent as ``items`` or with ``product_id`` (and an absent quantity means
    1), and a one-line order with a total keeps the form orders had before lines, so a key
    used then still matches its replay. The customer is part of the request: another
    customer's use of the same key is a different request (it never replays their order)."""
    price = "none" if total_price is None else format(total_price.normalize(), "f")
    if len(items) == 1:
        line = items[0]
        canonical = f"product_id={line.product_id}\nquantity={line.quantity}\ntotal_price={price}"
    else:
        lines = ",".join(f"{line.product_id}:{line.quantity}" for line in items)
        canonical = f"items={lines}\ntotal_price={price}"
    if customer_id is not None:
        canonical += f"\ncustomer_id={customer_id}"
    if hold_seconds is not None:  # absent without a hold: keys used before holds still match
        canonical += f"\nhold_seconds={hold_seconds}"
    return hashlib.sha256(canonical.encode()).hexdigest()

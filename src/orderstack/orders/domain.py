"""Orders and their life: pending, then confirmed, failed or cancelled, once.

Pure: no I/O, no framework, no adapter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from orderstack.quantities import MAX_ORDER_QUANTITY as MAX_ORDER_QUANTITY


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# An order's life: it leaves pending once, for good; a confirmed order may still be
# cancelled (its units go back). Failed and cancelled are final; nothing moves back.
_MOVES: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset(
        {OrderStatus.CONFIRMED, OrderStatus.FAILED, OrderStatus.CANCELLED}
    ),
    OrderStatus.CONFIRMED: frozenset({OrderStatus.CANCELLED}),
}


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


class UnknownProduct(Exception):
    """The product to order does not exist (or was deleted)."""


class CatalogUnavailable(Exception):
    """The product could not be checked: not cached and the product service did not answer."""


class IdempotencyKeyReused(Exception):
    """An idempotency key came back with a different request body than its first use."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"idempotency key {request_id!r} was used with a different request")
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    product_id: int
    total_price: Decimal
    status: OrderStatus
    created_at: datetime
    quantity: int = 1  # units of the product, 1..MAX_ORDER_QUANTITY


@dataclass(frozen=True, slots=True)
class NewOrder:
    """An order to store: what the client asked for, and its idempotency key if it sent one."""

    product_id: int
    total_price: Decimal
    request_id: str | None = None
    request_fingerprint: str | None = None  # see request_fingerprint(); set with request_id
    quantity: int = 1


@dataclass(frozen=True, slots=True)
class SettleOrder:
    """The product service's answer for one order (``order.qty_confirmed`` / ``_failed``)."""

    order_id: int
    status: OrderStatus  # CONFIRMED or FAILED, never PENDING


def request_fingerprint(product_id: int, total_price: Decimal, quantity: int = 1) -> str:
    """The sha256 (hex) of a create-order request in canonical form, stored beside its
    idempotency key: a replay with the same key must carry the same fingerprint.

    Equal requests give equal fingerprints however they were written: the price is
    normalised (``1500``, ``1500.0`` and ``1500.00`` are one price) and the quantity is
    always included (an absent quantity means 1), so adding a field later does not change
    the fingerprint of requests that do not use it.
    """
    price = format(total_price.normalize(), "f")
    canonical = f"product_id={product_id}\nquantity={quantity}\ntotal_price={price}"
    return hashlib.sha256(canonical.encode()).hexdigest()

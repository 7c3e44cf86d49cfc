"""Idempotency keys on order creation: exact keys, one request per key, a fingerprint."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from hashlib import sha256

import pytest

from orderstack.orders.domain import (
    IdempotencyKeyReused,
    NewOrder,
    OrderLine,
    request_fingerprint,
)
from orderstack.orders.service import OrderService
from tests.unit.fakes import START, FakeCatalog, FakeOrderDatabase


async def test_same_key_same_body_returns_the_first_order(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    first, _ = await order_service.create_order(1, Decimal("10"), request_id="k")
    again, created = await order_service.create_order(1, Decimal("10.00"), request_id="k")

    assert (again, created) == (first, False)  # 10 and 10.00 are one price
    assert len(order_db.outbox.events) == 1


@pytest.mark.parametrize(
    ("product_id", "total_price"),
    [
        pytest.param(2, Decimal(10), id="other product"),
        pytest.param(1, Decimal("10.01"), id="price"),
    ],
)
async def test_same_key_different_body_is_refused_and_writes_nothing(
    order_service: OrderService,
    order_db: FakeOrderDatabase,
    catalog: FakeCatalog,
    product_id: int,
    total_price: Decimal,
) -> None:
    first, _ = await order_service.create_order(1, Decimal(10), request_id="k")
    calls = catalog.calls

    with pytest.raises(IdempotencyKeyReused) as refused:
        await order_service.create_order(product_id, total_price, request_id="k")

    assert refused.value.request_id == "k"
    assert list(order_db.orders.rows) == [first.id]
    assert len(order_db.outbox.events) == 1
    assert catalog.calls == calls  # refused before asking the product service


async def test_keys_differing_in_case_or_accents_are_different_keys(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    orders = [
        (await order_service.create_order(1, Decimal(10), request_id=key))[0]
        for key in ("abc", "ABC", "äbc")
    ]

    assert len({o.id for o in orders}) == 3
    assert len(order_db.outbox.events) == 3


async def test_concurrent_twins_with_different_bodies_create_one_order(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    """Both pass the first look-up; the unique key stops the second, which then sees the
    first's fingerprint and is refused instead of answered with someone else's order."""
    results = await asyncio.gather(
        order_service.create_order(1, Decimal(10), request_id="twin"),
        order_service.create_order(2, Decimal(10), request_id="twin"),
        return_exceptions=True,
    )

    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, IdempotencyKeyReused)]
    assert len(created) == 1 and len(refused) == 1
    assert len(order_db.orders.rows) == 1
    assert len(order_db.outbox.events) == 1


async def test_an_order_stored_without_a_fingerprint_is_replayed(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    """Orders keyed before fingerprints existed have nothing to compare with."""
    async with order_db.unit_of_work() as uow:
        [old] = await uow.orders.add_many(
            [NewOrder((OrderLine(1, 1),), Decimal(10), "old-key")], START
        )
        await uow.commit()

    again, created = await order_service.create_order(2, Decimal(5), request_id="old-key")

    assert (again, created) == (old, False)


def test_fingerprint_is_the_same_for_equal_requests_written_differently() -> None:
    one = (OrderLine(1, 1),)
    assert request_fingerprint(one, Decimal("1500")) == request_fingerprint(one, Decimal("1500.00"))
    assert request_fingerprint(one, Decimal("1500")) == request_fingerprint(one, Decimal("1.5E+3"))
    # The form a one-line order had before orders had lines: keys used then still match.
    before_lines = "product_id=1\nquantity=1\ntotal_price=1500"
    assert request_fingerprint(one, Decimal("1500.0")) == sha256(before_lines.encode()).hexdigest()


def test_fingerprint_differs_for_any_field() -> None:
    base = request_fingerprint((OrderLine(1, 1),), Decimal("19.99"))
    assert base != request_fingerprint((OrderLine(2, 1),), Decimal("19.99"))
    assert base != request_fingerprint((OrderLine(1, 1),), Decimal("19.9"))
    assert base != request_fingerprint((OrderLine(1, 2),), Decimal("19.99"))
    assert base != request_fingerprint((OrderLine(1, 1),), None)
    two = (OrderLine(1, 1), OrderLine(2, 1))
    assert request_fingerprint(two, None) != request_fingerprint(two[::-1], None)
    assert request_fingerprint(two, None) != request_fingerprint(two, Decimal("19.99"))
    assert len(base) == 64 and int(base, 16) >= 0  # sha256, hex

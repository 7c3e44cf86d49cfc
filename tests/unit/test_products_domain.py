"""The stock rule, without I/O: who gets the units a batch of orders asks for."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderstack.products.domain import (
    Allocation,
    Product,
    ReservationOutcome,
    ReserveStock,
    allocate,
)

CONFIRMED, FAILED = ReservationOutcome.CONFIRMED, ReservationOutcome.FAILED
NOW = datetime(2025, 9, 20, tzinfo=UTC)


def outcomes(allocation: Allocation) -> dict[int, ReservationOutcome]:
    return {request.order_id: outcome for request, outcome in allocation.outcomes}


def test_the_oldest_orders_get_the_units_there_are() -> None:
    requests = [ReserveStock(order_id, 7) for order_id in (30, 10, 20)]

    allocation = allocate({7: 2}, requests)

    assert outcomes(allocation) == {10: CONFIRMED, 20: CONFIRMED, 30: FAILED}
    assert allocation.taken == {7: 2}
    assert [r.order_id for r, _ in allocation.outcomes] == [30, 10, 20]  # request order kept


def test_an_unknown_or_deleted_product_fails_its_orders_and_takes_nothing() -> None:
    allocation = allocate({1: 5}, [ReserveStock(1, 99), ReserveStock(2, 1)])

    assert outcomes(allocation) == {1: FAILED, 2: CONFIRMED}
    assert allocation.taken == {1: 1}


def test_an_empty_product_gives_nothing() -> None:
    allocation = allocate({1: 0}, [ReserveStock(1, 1)])

    assert outcomes(allocation) == {1: FAILED}
    assert allocation.taken == {}


def test_an_order_asked_twice_in_one_batch_is_decided_once() -> None:
    allocation = allocate({1: 5}, [ReserveStock(4, 1), ReserveStock(4, 1)])

    assert [(r.order_id, o) for r, o in allocation.outcomes] == [(4, CONFIRMED)]
    assert allocation.taken == {1: 1}


@given(
    stock=st.dictionaries(st.integers(1, 5), st.integers(0, 6), max_size=5),
    requests=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 6)), max_size=40),
)
def test_never_more_units_than_there_are_and_every_unit_to_a_confirmed_order(
    stock: dict[int, int], requests: list[tuple[int, int]]
) -> None:
    allocation = allocate(stock, [ReserveStock(o, p) for o, p in requests])

    decided = outcomes(allocation)
    assert set(decided) == {o for o, _ in requests}
    for product_id, units in allocation.taken.items():
        assert 0 < units <= stock[product_id]
    confirmed_per_product: dict[int, int] = {}
    for request, outcome in allocation.outcomes:
        if outcome is CONFIRMED:
            confirmed_per_product[request.product_id] = (
                confirmed_per_product.get(request.product_id, 0) + 1
            )
    assert confirmed_per_product == allocation.taken
    # A failure means its product had nothing left for it.
    for request, outcome in allocation.outcomes:
        if outcome is FAILED:
            assert allocation.taken.get(request.product_id, 0) == stock.get(request.product_id, 0)


def test_taking_units_makes_a_new_version_and_never_goes_below_zero() -> None:
    product = Product(1, "Lamp", Decimal(3), 2, NOW, NOW, 4)

    after = product.take(2, NOW)

    assert (after.qty, after.version) == (0, 5)
    with pytest.raises(ValueError, match="cannot take"):
        product.take(3, NOW)
    with pytest.raises(ValueError, match="cannot take"):
        product.take(0, NOW)

"""The stock rule, without I/O: who gets the units a batch of orders asks for."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderstack.products.domain import (
    MAX_QTY,
    Allocation,
    CancelReservation,
    Product,
    Reservation,
    ReservationOutcome,
    ReserveStock,
    StockLimitExceeded,
    allocate,
    cancel,
)

CONFIRMED, FAILED = ReservationOutcome.CONFIRMED, ReservationOutcome.FAILED
CANCELLED = ReservationOutcome.CANCELLED
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


# -- quantities: all of an order's units or none ------------------------------------------


def test_an_order_takes_all_its_units_or_none() -> None:
    allocation = allocate({7: 5}, [ReserveStock(1, 7, 3), ReserveStock(2, 7, 3)])

    assert outcomes(allocation) == {1: CONFIRMED, 2: FAILED}
    assert allocation.taken == {7: 3}  # order 2 took nothing, not the 2 units left


def test_a_later_smaller_order_still_fits_after_a_larger_one_failed() -> None:
    requests = [ReserveStock(1, 7, 4), ReserveStock(2, 7, 5), ReserveStock(3, 7, 2)]

    allocation = allocate({7: 6}, requests)

    assert outcomes(allocation) == {1: CONFIRMED, 2: FAILED, 3: CONFIRMED}
    assert allocation.taken == {7: 6}


def test_an_order_for_more_than_the_whole_stock_fails() -> None:
    allocation = allocate({7: 3}, [ReserveStock(1, 7, 4)])

    assert outcomes(allocation) == {1: FAILED}
    assert allocation.taken == {}


@given(
    stock=st.dictionaries(st.integers(1, 4), st.integers(0, 12), max_size=4),
    requests=st.lists(
        st.tuples(st.integers(1, 30), st.integers(1, 5), st.integers(1, 6)), max_size=30
    ),
)
def test_each_order_gets_all_its_units_or_none_oldest_first(
    stock: dict[int, int], requests: list[tuple[int, int, int]]
) -> None:
    """The rule: per product, orders in id order; an order is confirmed when its whole
    quantity fits in what the older confirmed orders left, else it fails and takes nothing
    (a younger, smaller order may still fit)."""
    asked = [ReserveStock(o, p, q) for o, p, q in requests]

    allocation = allocate(stock, asked)

    decided = outcomes(allocation)
    first = {r.order_id: r for r in reversed(asked)}  # the first request of an order wins
    assert set(decided) == set(first)
    for product_id, units in allocation.taken.items():
        assert 0 < units <= stock[product_id]
    taken: dict[int, int] = {}
    for order_id in sorted(first):
        request = first[order_id]
        left = stock.get(request.product_id, 0) - taken.get(request.product_id, 0)
        fits = request.quantity <= left
        assert decided[order_id] is (CONFIRMED if fits else FAILED), (order_id, left)
        if fits:
            taken[request.product_id] = taken.get(request.product_id, 0) + request.quantity
    assert taken == allocation.taken  # every unit taken belongs to a confirmed order


def test_giving_units_back_makes_a_new_version_within_the_limit() -> None:
    product = Product(1, "Lamp", Decimal(3), 2, NOW, NOW, 4)

    after = product.give_back(3, NOW)

    assert (after.qty, after.version) == (5, 5)
    with pytest.raises(ValueError, match="cannot give back"):
        product.give_back(0, NOW)
    with pytest.raises(StockLimitExceeded):
        product.give_back(MAX_QTY, NOW)


# -- cancellation: units back exactly once -----------------------------------------------


def test_cancelling_a_confirmed_order_gives_back_its_units_to_its_product() -> None:
    known = {5: Reservation(5, 7, 3, CONFIRMED)}

    decided = cancel(known, [CancelReservation(5, 7, 3)])

    assert decided.reservations == [Reservation(5, 7, 3, CANCELLED)]
    assert decided.returned == {7: 3}


def test_cancelling_a_failed_order_gives_nothing_back() -> None:
    decided = cancel({5: Reservation(5, 7, 3, FAILED)}, [CancelReservation(5, 7, 3)])

    assert decided.reservations == [Reservation(5, 7, 3, CANCELLED)]
    assert decided.returned == {}


def test_a_second_cancellation_changes_nothing() -> None:
    known = {5: Reservation(5, 7, 3, CANCELLED)}

    assert cancel(known, [CancelReservation(5, 7, 3)]).reservations == []
    twice = cancel({5: Reservation(5, 7, 3, CONFIRMED)}, [CancelReservation(5, 7, 3)] * 2)
    assert twice.returned == {7: 3}
    assert twice.reservations == [Reservation(5, 7, 3, CANCELLED)]


def test_an_order_not_seen_yet_is_remembered_cancelled_holding_nothing() -> None:
    decided = cancel({}, [CancelReservation(5, 7, 2)])

    assert decided.reservations == [Reservation(5, 7, 2, CANCELLED)]
    assert decided.returned == {}
    assert decided.reservations[0].units_held == 0

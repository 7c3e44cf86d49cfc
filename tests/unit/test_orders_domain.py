"""An order's life, without I/O: it leaves pending once, for good; a confirmed order may
still be cancelled."""

from __future__ import annotations

import pytest

from orderstack.orders.domain import OrderStatus, can_move, moves_into

PENDING, CONFIRMED, FAILED, CANCELLED = (
    OrderStatus.PENDING,
    OrderStatus.CONFIRMED,
    OrderStatus.FAILED,
    OrderStatus.CANCELLED,
)


@pytest.mark.parametrize("target", [CONFIRMED, FAILED, CANCELLED])
def test_a_pending_order_may_end_any_way(target: OrderStatus) -> None:
    assert can_move(PENDING, target)


@pytest.mark.parametrize("answer", [CONFIRMED, FAILED])
def test_only_a_pending_order_takes_an_answer(answer: OrderStatus) -> None:
    # A reserved order is confirmed too, but by its client (the service settles pending
    # orders only: tests/unit/test_order_holds.py).
    assert moves_into(answer) - {OrderStatus.RESERVED} == {PENDING}


def test_a_pending_reserved_or_confirmed_order_may_be_cancelled() -> None:
    assert moves_into(CANCELLED) == {PENDING, CONFIRMED, OrderStatus.RESERVED}


def test_a_confirmed_order_may_only_be_cancelled() -> None:
    assert [t for t in OrderStatus if can_move(CONFIRMED, t)] == [CANCELLED]


@pytest.mark.parametrize("final", [FAILED, CANCELLED])
def test_a_final_status_never_changes(final: OrderStatus) -> None:
    assert not any(can_move(final, target) for target in OrderStatus)


def test_nothing_goes_back_to_pending() -> None:
    assert moves_into(PENDING) == frozenset()
    assert not can_move(PENDING, PENDING)

"""An order's life, without I/O: it leaves pending once, for good."""

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
    assert moves_into(target) == {PENDING}


@pytest.mark.parametrize("final", [CONFIRMED, FAILED, CANCELLED])
def test_a_final_status_never_changes(final: OrderStatus) -> None:
    assert not any(can_move(final, target) for target in OrderStatus)


def test_nothing_goes_back_to_pending() -> None:
    assert moves_into(PENDING) == frozenset()
    assert not can_move(PENDING, PENDING)

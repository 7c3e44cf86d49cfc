"""The pending-order sweeper against fakes: orders pending too long get order.created again."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from orderstack.orders.domain import Order, OrderStatus, SettleOrder
from orderstack.orders.service import OrderService, resend_delay
from orderstack.orders.sweeper import PendingOrderSweeper
from tests.unit.fakes import Clock, FakeOrderDatabase

RESEND_AFTER = 30.0


def sweeper(
    service: OrderService, *, batch: int = 100, max_batches: int = 20
) -> PendingOrderSweeper:
    return PendingOrderSweeper(
        service,
        interval=0.01,
        pending_for=RESEND_AFTER,
        batch=batch,
        max_batches_per_round=max_batches,
    )


async def place(service: OrderService, count: int = 1) -> list[Order]:
    return [(await service.create_order(1, Decimal(10)))[0] for _ in range(count)]


def created_events_for(db: FakeOrderDatabase, order: Order) -> list[str]:
    return [e.id for e in db.outbox.named("order.created") if e.data["orderId"] == order.id]


async def test_an_order_pending_too_long_gets_a_fresh_order_created_with_the_same_payload(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    [order] = await place(order_service)
    [original] = order_db.outbox.events
    now = clock.advance(RESEND_AFTER + 1)

    assert await sweeper(order_service).sweep_once() == 1

    [_, resent] = order_db.outbox.events
    assert resent.name == "order.created"
    assert resent.id != original.id  # a new event: the product service's inbox takes it
    assert resent.data == original.data
    assert order_db.orders.updated_at[order.id] == now
    assert order_db.orders.rows[order.id].status is OrderStatus.PENDING


async def test_an_order_pending_for_less_than_the_setting_is_left_alone(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    await place(order_service)
    clock.advance(RESEND_AFTER - 1)

    assert await sweeper(order_service).sweep_once() == 0
    assert len(order_db.outbox.events) == 1


async def test_settled_orders_are_never_resent(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    confirmed, failed = await place(order_service, 2)
    async with order_db.unit_of_work() as uow:
        await order_service.settle_orders(
            uow,
            [
                SettleOrder(confirmed.id, OrderStatus.CONFIRMED),
                SettleOrder(failed.id, OrderStatus.FAILED),
            ],
        )
        await uow.commit()
    clock.advance(RESEND_AFTER * 10)

    assert await sweeper(order_service).sweep_once() == 0
    assert len(order_db.outbox.events) == 2


async def test_a_resent_order_waits_the_whole_delay_again_before_the_next_resend(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    [order] = await place(order_service)
    sweep = sweeper(order_service)
    clock.advance(RESEND_AFTER + 1)
    await sweep.sweep_once()

    clock.advance(RESEND_AFTER - 1)
    assert await sweep.sweep_once() == 0
    clock.advance(2)
    assert await sweep.sweep_once() == 1
    assert len(created_events_for(order_db, order)) == 3


async def test_the_oldest_orders_go_first_in_bounded_batches(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    orders = []
    for _ in range(5):
        orders += await place(order_service)
        clock.advance(1)
    clock.advance(RESEND_AFTER)
    commits = order_db.commits

    assert await sweeper(order_service, batch=2, max_batches=2).sweep_once() == 4

    assert order_db.commits - commits == 2  # one transaction per batch
    resent = [e.data["orderId"] for e in order_db.outbox.events[5:]]
    assert resent == [o.id for o in orders[:4]]
    assert await sweeper(order_service, batch=2).sweep_once() == 1  # the next round


async def test_a_failed_sweep_resends_nothing_and_the_next_one_does(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    [order] = await place(order_service)
    before = order_db.orders.updated_at[order.id]
    clock.advance(RESEND_AFTER + 1)
    order_db.commit_failures.append(ConnectionError("database gone"))
    sweep = sweeper(order_service)

    with pytest.raises(ConnectionError):
        await sweep.sweep_once()
    assert len(order_db.outbox.events) == 1
    assert order_db.orders.updated_at[order.id] == before  # rolled back

    assert await sweep.sweep_once() == 1


async def test_the_running_sweeper_resends_and_keeps_going_after_a_failure(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    [order] = await place(order_service)
    clock.advance(RESEND_AFTER + 1)
    order_db.commit_failures.append(ConnectionError("database gone"))
    running = sweeper(order_service)

    running.start()
    try:
        for _ in range(200):
            if len(created_events_for(order_db, order)) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await running.stop()

    assert len(created_events_for(order_db, order)) == 2


# -- backoff per order ---------------------------------------------------------------------

MAX_WAIT = 8 * RESEND_AFTER


def backing_off(service: OrderService) -> PendingOrderSweeper:
    return PendingOrderSweeper(
        service, interval=0.01, pending_for=RESEND_AFTER, batch=100, max_wait=MAX_WAIT
    )


@pytest.mark.parametrize(
    ("resends", "ceiling"),
    [(1, 60.0), (2, 120.0), (3, 240.0), (4, 240.0), (60, 240.0)],
)
def test_the_wait_after_each_resend_doubles_up_to_the_cap_and_is_jittered_down_by_half(
    resends: int, ceiling: float
) -> None:
    def highest(low: float, high: float) -> float:
        return high

    def lowest(low: float, high: float) -> float:
        return low

    assert resend_delay(resends, 30.0, 240.0, highest) == ceiling
    assert resend_delay(resends, 30.0, 240.0, lowest) == ceiling / 2


def test_the_wait_is_never_shorter_than_the_first_one() -> None:
    assert resend_delay(3, 30.0, 40.0, lambda low, high: low) == 30.0


async def test_each_resend_of_an_order_waits_twice_as_long_as_the_last_up_to_the_cap(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    [order] = await place(order_service)
    sweep = backing_off(order_service)
    clock.advance(RESEND_AFTER + 1)
    assert await sweep.sweep_once() == 1

    gaps = []
    for _ in range(6):  # sweep every second until the order is resent again
        waited = 0
        while True:
            clock.advance(1)
            waited += 1
            if await sweep.sweep_once():
                break
            assert waited <= MAX_WAIT + 1
        gaps.append(waited)

    for resends, gap in enumerate(gaps, start=1):
        ceiling = min(MAX_WAIT, RESEND_AFTER * 2**resends)
        assert ceiling / 2 <= gap <= ceiling + 1, (resends, gaps)
    assert order_db.orders.resends[order.id] == 7
    assert len(created_events_for(order_db, order)) == 8


async def test_an_outage_resends_each_pending_order_a_few_times_an_hour_not_every_delay(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    """The product service is away for an hour: nothing answers, every order stays
    pending. Without backoff each would get 120 order.created (one per 30 s)."""
    orders = await place(order_service, 20)
    sweep = PendingOrderSweeper(order_service, interval=5, pending_for=30, batch=100, max_wait=600)
    for _ in range(3600 // 5):
        clock.advance(5)
        await sweep.sweep_once()

    resent = [len(created_events_for(order_db, o)) - 1 for o in orders]
    # 30 s, then waits of 30-60, 60-120, 120-240, 240-480, then 300-600 s each.
    assert all(5 <= n <= 16 for n in resent), resent
    assert len(set(order_db.orders.resend_at.values())) > 1  # spread out, not in step


async def test_orders_never_resent_go_before_those_whose_next_resend_is_due(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    [first] = await place(order_service)
    sweep = backing_off(order_service)
    clock.advance(RESEND_AFTER + 1)
    await sweep.sweep_once()
    [second] = await place(order_service)
    clock.advance(2 * RESEND_AFTER + 1)  # both due: the first for its second resend

    sent = await backing_off(order_service).sweep_once()

    assert sent == 2
    resent = [e.data["orderId"] for e in order_db.outbox.named("order.created")][-2:]
    assert resent == [second.id, first.id]

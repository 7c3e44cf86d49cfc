"""The pending-order sweeper against fakes: orders pending too long get order.created again."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from orderstack.orders.domain import Order, OrderStatus, SettleOrder
from orderstack.orders.service import OrderService
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

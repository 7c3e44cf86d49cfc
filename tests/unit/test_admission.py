"""Admission by delay (admission.py), on a clock of the test's own: a burst is served, a
standing queue is shed until answers are fast again, an outage is not taken for a queue."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from fastapi import FastAPI

from orderstack.admission import ConcurrencyLimit, SettleDelayShedder
from orderstack.orders.domain import OrderStatus, SettleOrder
from orderstack.orders.service import OrderService
from orderstack.web.limits import AdmissionGate, InFlightLimit
from tests.unit.fakes import FakeCatalog, FakeOrderDatabase

TARGET = 0.25


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def serve(limit: ConcurrencyLimit, clock: Clock, *, took: float, requests: int) -> int:
    """``requests`` arrive together and each takes ``took``; return how many were admitted."""
    admitted = sum(limit.try_acquire() for _ in range(requests))
    clock.now += took
    for _ in range(admitted):
        limit.release(took)
    return admitted


def test_a_burst_with_some_slow_answers_is_not_shed() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(target=TARGET, maximum=1024, clock=clock)

    for _ in range(20):  # a burst: most answers slow, the first of each round fast
        assert limit.try_acquire()
        clock.now += 0.05
        limit.release(0.01)
        assert serve(limit, clock, took=2.0, requests=100) == 100

    assert limit.limit == 1024


def test_a_standing_queue_shrinks_the_limit_and_refuses_at_once() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(target=TARGET, maximum=1024, minimum=8, clock=clock)

    for _ in range(30):  # every answer slow: a queue stands
        serve(limit, clock, took=1.0, requests=500)

    assert limit.limit == 8
    held = [limit.try_acquire() for _ in range(20)]
    assert held.count(True) == 8  # the rest refused at once
    assert limit.in_flight == 8


def slow_interval(limit: ConcurrencyLimit, clock: Clock, took: float) -> None:
    """One interval (0.1 s) whose only answer took ``took``."""
    assert limit.try_acquire()
    clock.now += 0.1
    limit.release(took)


def test_a_queue_standing_for_less_than_the_burst_allowance_is_not_shed() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(target=TARGET, maximum=1024, burst=1.0, clock=clock)

    for _ in range(9):  # 0.9 s of slow answers, then a fast one, then 0.9 s slow again
        slow_interval(limit, clock, 0.3)
    slow_interval(limit, clock, 0.01)
    for _ in range(9):
        slow_interval(limit, clock, 0.3)
    assert limit.limit == 1024

    for _ in range(5):  # past the allowance: shed
        slow_interval(limit, clock, 0.3)
    assert limit.limit < 1024


def test_a_lagging_event_loop_is_a_standing_queue_too() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(target=TARGET, maximum=1024, clock=clock)

    for _ in range(30):  # answers look fast, but the loop runs its timers 100 ms late
        limit.lagged(0.1)
        serve(limit, clock, took=0.1, requests=100)

    assert limit.limit < 100


def test_the_limit_grows_back_once_answers_are_fast_again() -> None:
    clock = Clock()
    limit = ConcurrencyLimit(target=TARGET, maximum=1024, minimum=8, clock=clock)
    for _ in range(30):
        serve(limit, clock, took=1.0, requests=500)
    shrunk = limit.limit

    for _ in range(200):
        serve(limit, clock, took=0.11, requests=50)

    assert shrunk == 8
    assert limit.limit == 1024


def shedder(
    clock: Clock, *, draws: list[float] | None = None, burst: float = 2.0
) -> SettleDelayShedder:
    values = iter(draws or [])
    return SettleDelayShedder(
        target=1.0, interval=0.5, burst=burst, clock=clock, draw=lambda: next(values)
    )


def test_orders_that_settle_within_target_are_never_refused() -> None:
    clock = Clock()
    shed = shedder(clock)

    for _ in range(100):
        clock.now += 0.1
        shed.settled(0.3)
        assert shed.admit()

    assert shed.probability == 0.0


def test_orders_settling_late_raise_the_refusal_probability_and_it_falls_once_they_catch_up() -> (
    None
):
    clock = Clock()
    shed = shedder(clock)
    for _ in range(20):  # 10 s of orders settling 3 s after their 201
        clock.now += 0.5
        shed.settled(3.0)
    high = shed.probability

    for _ in range(20):  # caught up
        clock.now += 0.5
        shed.settled(0.2)

    assert high >= 0.9
    assert shed.probability == 0.0


def test_an_outage_where_nothing_settles_is_not_taken_for_a_queue() -> None:
    clock = Clock()
    shed = shedder(clock, draws=[0.99] * 100)
    for _ in range(20):
        clock.now += 0.5
        shed.settled(3.0)
    assert shed.probability > 0.5

    for _ in range(20):  # nothing settles at all: the product service is down
        clock.now += 0.5
        shed.admit()

    assert shed.probability == 0.0  # orders are taken again: the outbox keeps them


def test_orders_settling_late_for_less_than_the_burst_allowance_are_not_refused() -> None:
    clock = Clock()
    shed = shedder(clock, burst=2.0)

    for _ in range(3):  # 1.5 s late: a burst of orders
        clock.now += 0.5
        shed.settled(3.0)
        assert shed.probability == 0.0
    for _ in range(3):  # then on time again
        clock.now += 0.5
        shed.settled(0.2)
    clock.now += 0.5
    shed.settled(3.0)

    assert shed.probability == 0.0


@pytest.mark.parametrize(("draw", "admitted"), [(0.5, False), (0.97, True)])
def test_a_refusal_is_drawn_against_the_probability(draw: float, admitted: bool) -> None:
    clock = Clock()
    shed = shedder(clock, draws=[draw])
    for _ in range(20):
        clock.now += 0.5
        shed.settled(3.0)

    assert shed.probability == pytest.approx(0.95)
    assert shed.admit() is admitted


async def settle(db: FakeOrderDatabase, service: OrderService, order_id: int) -> None:
    async with db.unit_of_work() as uow:
        await service.settle_orders(uow, [SettleOrder(order_id, OrderStatus.CONFIRMED)])
        await uow.commit()


async def test_orders_settling_late_here_close_the_door_to_new_ones_which_write_nothing() -> None:
    clock = Clock()
    db = FakeOrderDatabase()
    shed = shedder(clock, draws=[0.0] * 100, burst=0)  # any probability above 0 refuses
    service = OrderService(db.unit_of_work, FakeCatalog({1}), shedder=shed)
    order, created = await service.create_order(1, Decimal(1))
    assert created
    clock.now += 3.0  # its answer comes 3 s after its 201
    await settle(db, service, order.id)
    stored = dict(db.orders.rows)
    assert shed.probability > 0

    app = FastAPI()

    @app.post("/orders", status_code=201)
    async def create() -> dict[str, int]:
        placed, _ = await service.create_order(1, Decimal(1))
        return {"id": placed.id}

    door = InFlightLimit(
        app,
        max_in_flight=100,
        style="seed",
        gates=[AdmissionGate("POST", "/orders", shed.admit, "orders are settling late")],
    )
    transport = httpx.ASGITransport(app=door)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        refused = await http.post("/orders")
        listed = await http.get("/orders")  # another route: not the gate's

    assert refused.status_code == 503
    assert refused.json()["code"] == "OVERLOADED"
    assert refused.headers["retry-after"] == "1"
    assert listed.status_code == 405  # reached the app
    assert db.orders.rows == stored  # the refused order wrote nothing
    assert len(db.outbox.events) == len(stored)


async def test_answers_for_orders_of_another_replica_are_no_signal() -> None:
    clock = Clock()
    db = FakeOrderDatabase()
    shed = shedder(clock)
    service = OrderService(db.unit_of_work, FakeCatalog({1}), shedder=shed)
    elsewhere = OrderService(db.unit_of_work, FakeCatalog({1}))  # another replica
    for _ in range(6):
        order, _ = await elsewhere.create_order(1, Decimal(1))
        clock.now += 3.0
        await settle(db, service, order.id)

    assert shed.probability == 0.0

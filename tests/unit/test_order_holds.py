"""Holds (issue 23, item 1) against fakes: an order placed with ``hold_seconds`` becomes
``reserved`` once its units are taken, then ``confirmed`` by its client, ``expired`` (its
units back, once) or ``cancelled``, exactly one of them; the routes in process.

``HOLDS_EXAMPLES`` sets how many interleavings hypothesis tries (30 by default)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.config import ConfigError, load_settings
from orderstack.events import ORDER_CANCELLED, ORDER_EXPIRED
from orderstack.messaging.envelope import Event
from orderstack.orders.api import order_router
from orderstack.orders.domain import (
    HOLDING,
    OrderExpired,
    OrderNotFound,
    OrderNotReserved,
    OrderStatus,
    SettleOrder,
    can_move,
    moves_into,
)
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService
from orderstack.web.errors import install_error_handlers
from tests.unit.fakes import Clock, FakeCatalog, FakeOrderDatabase, FakeProductDatabase
from tests.unit.routes import authenticated, open_access

PENDING, RESERVED, CONFIRMED, EXPIRED, CANCELLED, FAILED = (
    OrderStatus.PENDING,
    OrderStatus.RESERVED,
    OrderStatus.CONFIRMED,
    OrderStatus.EXPIRED,
    OrderStatus.CANCELLED,
    OrderStatus.FAILED,
)
STOCK = 20


class Holds:
    """Both services on fakes with one clock; ``deliver`` hands each outbox's new events to
    the other service's handler (the broker, by hand)."""

    def __init__(self, *, default_hold: int = 0) -> None:
        self.clock = Clock()
        self.order_db, self.product_db = FakeOrderDatabase(), FakeProductDatabase()
        self.products = ProductService(
            self.product_db.unit_of_work, InProcessProductCache(), self.clock
        )
        self.orders = OrderService(
            self.order_db.unit_of_work,
            FakeCatalog(known={1}),
            self.clock,
            hold_seconds=default_hold,
        )
        self._sent = {"orders": 0, "products": 0}

    async def deliver(self) -> None:
        for _ in range(3):
            for side, db, target_db, handler in (
                ("orders", self.order_db, self.product_db, OrderStockHandler(self.products)),
                ("products", self.product_db, self.order_db, OrderEventsHandler(self.orders)),
            ):
                routed = [e for e in db.outbox.events if e.name.startswith("order.")]
                fresh = routed[self._sent[side] :]
                self._sent[side] = len(routed)
                if fresh:
                    await self._apply(target_db, handler, fresh)

    @staticmethod
    async def _apply(db: Any, handler: Any, events: list[Event]) -> None:
        async with db.unit_of_work() as uow:
            claimed = await uow.inbox.claim(events)
            await handler.apply(uow, [handler.validate(e) for e in claimed])
            await uow.commit()

    def status(self, order_id: int) -> OrderStatus:
        return self.order_db.orders.rows[order_id].status

    def qty(self) -> int:
        return self.product_db.products.rows[1].qty

    def given_back(self, order_id: int) -> int:
        """order.expired and order.cancelled events written for the order."""
        return sum(
            1
            for e in self.order_db.outbox.events
            if e.name in (ORDER_EXPIRED.name, ORDER_CANCELLED.name)
            and e.data["orderId"] == order_id
        )


async def holds(default_hold: int = 0) -> Holds:
    services = Holds(default_hold=default_hold)
    await services.products.create_product("Chair", Decimal(40), STOCK)
    return services


def test_the_moves_of_a_hold() -> None:
    assert can_move(PENDING, RESERVED) and not can_move(RESERVED, PENDING)
    assert moves_into(EXPIRED) == {RESERVED}
    assert moves_into(CONFIRMED) == {PENDING, RESERVED}
    assert RESERVED in moves_into(CANCELLED)
    assert not any(can_move(EXPIRED, s) for s in OrderStatus)
    assert {CONFIRMED, RESERVED} == HOLDING


@pytest.mark.parametrize("seconds", [1, 4, 86_401, -1])
def test_order_hold_seconds_is_0_or_a_hold(seconds: int) -> None:
    with pytest.raises(ConfigError, match="ORDER_HOLD_SECONDS"):
        load_settings(ORDER_HOLD_SECONDS=seconds)
    assert load_settings().ORDER_HOLD_SECONDS == 0  # off by default
    assert load_settings(ORDER_HOLD_SECONDS=5).ORDER_HOLD_SECONDS == 5


async def test_without_a_hold_an_order_is_confirmed_as_before() -> None:
    two = await holds()
    order, _ = await two.orders.create_order(1, quantity=2)
    await two.deliver()
    stored = two.order_db.orders.rows[order.id]
    assert (stored.status, stored.hold_seconds, stored.expires_at) == (CONFIRMED, None, None)
    assert two.qty() == STOCK - 2


async def test_a_hold_is_reserved_then_confirmed_once() -> None:
    two = await holds()
    order, _ = await two.orders.create_order(1, quantity=2, hold_seconds=60)
    with pytest.raises(OrderNotReserved):  # pending: its units are not taken yet
        await two.orders.confirm_order(order.id)
    await two.deliver()
    reserved = two.order_db.orders.rows[order.id]
    assert reserved.status is RESERVED and two.qty() == STOCK - 2
    assert reserved.expires_at == two.clock.now + timedelta(seconds=60)
    assert reserved.items[0].unit_price == Decimal(40)  # priced as a confirmed one is

    two.clock.advance(59)
    confirmed, now = await two.orders.confirm_order(order.id, payment_reference="pay-1")
    again, now_again = await two.orders.confirm_order(order.id, payment_reference="other")
    assert (confirmed.status, now, now_again) == (CONFIRMED, True, False)
    assert again.payment_reference == "pay-1" and again.status is CONFIRMED
    two.clock.advance(10)
    assert await two.orders.expire_due(10) == 0
    await two.deliver()
    assert (two.status(order.id), two.qty(), two.given_back(order.id)) == (CONFIRMED, 18, 0)


async def test_a_customer_confirms_only_its_own_hold() -> None:
    two = await holds()
    order, _ = await two.orders.create_order(1, hold_seconds=30, customer_id="alice")
    await two.deliver()
    with pytest.raises(OrderNotFound):
        await two.orders.confirm_order(order.id, owner="bob")
    assert two.status(order.id) is RESERVED
    confirmed, _ = await two.orders.confirm_order(order.id, owner="alice")
    assert confirmed.status is CONFIRMED


async def test_an_answer_again_does_not_confirm_a_reserved_order() -> None:
    two = await holds()
    order, _ = await two.orders.create_order(1, hold_seconds=30)
    await two.deliver()
    async with two.order_db.unit_of_work() as uow:
        await two.orders.settle_orders(uow, [SettleOrder(order.id, CONFIRMED)])
        await uow.commit()
    assert two.status(order.id) is RESERVED


async def test_a_hold_not_confirmed_expires_and_its_units_come_back_once() -> None:
    two = await holds(default_hold=30)  # ORDER_HOLD_SECONDS
    order, _ = await two.orders.create_order(1, quantity=3)
    await two.deliver()
    assert (two.status(order.id), two.qty()) == (RESERVED, STOCK - 3)
    two.clock.advance(29.9)
    assert await two.orders.expire_due(10) == 0
    two.clock.advance(0.1)
    assert await two.orders.expire_due(10) == 1
    assert await two.orders.expire_due(10) == 0
    await two.deliver()
    assert (two.status(order.id), two.qty(), two.given_back(order.id)) == (EXPIRED, STOCK, 1)
    with pytest.raises(OrderExpired):
        await two.orders.confirm_order(order.id)
    with pytest.raises(Exception, match="cannot be cancelled"):
        await two.orders.cancel_order(order.id)
    assert two.orders.entered[EXPIRED] == 1


async def test_a_confirm_after_the_end_expires_the_order_before_the_sweep() -> None:
    two = await holds()
    order, _ = await two.orders.create_order(1, quantity=2, hold_seconds=5)
    await two.deliver()
    two.clock.advance(5)  # expires_at is not after now: over
    with pytest.raises(OrderExpired) as refused:
        await two.orders.confirm_order(order.id)
    assert refused.value.order.status is EXPIRED
    assert await two.orders.expire_due(10) == 0  # expired once, by the confirm
    with pytest.raises(OrderExpired):
        await two.orders.confirm_order(order.id)
    await two.deliver()
    assert (two.qty(), two.given_back(order.id)) == (STOCK, 1)


async def test_a_reserved_order_can_be_cancelled() -> None:
    two = await holds()
    order, _ = await two.orders.create_order(1, quantity=4, hold_seconds=60)
    await two.deliver()
    cancelled, now = await two.orders.cancel_order(order.id)
    assert (cancelled.status, now) == (CANCELLED, True)
    two.clock.advance(120)
    assert await two.orders.expire_due(10) == 0
    with pytest.raises(OrderNotReserved):
        await two.orders.confirm_order(order.id)
    await two.deliver()
    assert (two.qty(), two.given_back(order.id)) == (STOCK, 1)


async def test_a_hold_that_fails_is_failed_and_not_confirmable() -> None:
    two = await holds()
    order, _ = await two.orders.create_order(1, quantity=STOCK + 1, hold_seconds=60)
    await two.deliver()
    assert two.status(order.id) is FAILED
    with pytest.raises(OrderNotReserved):
        await two.orders.confirm_order(order.id)


async def test_a_retry_is_the_same_request_whatever_the_default_hold_says_by_then() -> None:
    two = await holds(default_hold=30)
    first, _ = await two.orders.create_order(1, request_id="k")
    assert first.hold_seconds == 30
    restarted = OrderService(
        two.order_db.unit_of_work, FakeCatalog(known={1}), two.clock, hold_seconds=0
    )
    again, created = await restarted.create_order(1, request_id="k")
    assert (again.id, created) == (first.id, False)


async def test_the_hold_is_part_of_an_idempotent_request() -> None:
    two = await holds()
    first, created = await two.orders.create_order(1, request_id="k", hold_seconds=60)
    again, created_again = await two.orders.create_order(1, request_id="k", hold_seconds=60)
    assert (created, created_again, again.id) == (True, False, first.id)
    with pytest.raises(Exception, match="different request"):
        await two.orders.create_order(1, request_id="k", hold_seconds=90)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["confirm", "expire", "cancel", "advance", "deliver"]),
        st.integers(0, 3),  # which order
        st.integers(1, 20),  # seconds to advance
    ),
    max_size=25,
)


@settings(max_examples=int(os.environ.get("HOLDS_EXAMPLES", "30")), deadline=None)
@given(
    holds_s=st.lists(st.integers(5, 40), min_size=4, max_size=4),
    quantities=st.lists(st.integers(1, 4), min_size=4, max_size=4),
    ops=_OPS,
)
async def test_confirms_expiries_and_cancels_interleaved(
    holds_s: list[int], quantities: list[int], ops: list[tuple[str, int, int]]
) -> None:
    """Whatever the order of confirms, expiry sweeps, cancels, time passing and deliveries:
    a confirm succeeds only before the order's expires_at; each order ends in one status;
    its units are given back at most once; and once everything is delivered the stock is
    the opening stock less the units of reserved and confirmed orders."""
    two = await holds()
    ids = []
    for hold, quantity in zip(holds_s, quantities, strict=True):
        order, _ = await two.orders.create_order(1, quantity=quantity, hold_seconds=hold)
        ids.append(order.id)
    await two.deliver()
    confirmed_at: dict[int, Any] = {}
    for op, index, seconds in ops:
        order_id = ids[index]
        if op == "confirm":
            before = two.order_db.orders.rows[order_id]
            try:
                order, now = await two.orders.confirm_order(order_id)
            except (OrderExpired, OrderNotReserved):
                assert before.status is not RESERVED or before.expires_at <= two.clock.now
                continue
            if now:
                assert before.status is RESERVED and before.expires_at > two.clock.now
                confirmed_at[order_id] = two.clock.now
            assert order.status is CONFIRMED
        elif op == "expire":
            await two.orders.expire_due(2)
        elif op == "cancel":
            try:
                await two.orders.cancel_order(order_id)
            except Exception as exc:  # an expired order is not cancellable
                assert "cannot be cancelled" in str(exc)
        elif op == "advance":
            two.clock.advance(seconds)
        else:
            await two.deliver()
    two.clock.advance(100)
    while await two.orders.expire_due(2):
        pass
    await two.deliver()
    statuses = {order_id: two.status(order_id) for order_id in ids}
    assert set(statuses.values()) <= {CONFIRMED, EXPIRED, CANCELLED}
    # A confirmed order stays confirmed, unless cancelled after (its units back).
    assert {statuses[i] for i in confirmed_at} <= {CONFIRMED, CANCELLED}
    held = sum(q for i, q in zip(ids, quantities, strict=True) if statuses[i] in HOLDING)
    assert two.qty() == STOCK - held
    for order_id in ids:
        assert two.given_back(order_id) == (0 if statuses[order_id] is CONFIRMED else 1)
    counted = Counter(e.name for e in two.order_db.outbox.events)
    assert counted[ORDER_EXPIRED.name] == sum(1 for s in statuses.values() if s is EXPIRED)


# -- routes ------------------------------------------------------------------------------


@pytest.fixture
async def services() -> Holds:
    return await holds()


@pytest.fixture
async def http(services: Holds) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app, "seed")
    app.state.orders = services.orders
    app.include_router(order_router(open_access()))
    authenticated(app, open_access())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.parametrize("hold", [4, 86_401, "60", 1.5, True])
async def test_a_hold_out_of_bounds_is_400(http: httpx.AsyncClient, hold: object) -> None:
    answer = await http.post("/orders", json={"product_id": 1, "hold_seconds": hold})
    assert answer.status_code == 400, answer.text


async def test_the_routes_of_a_hold(http: httpx.AsyncClient, services: Holds) -> None:
    placed = await http.post("/orders", json={"product_id": 1, "quantity": 2, "hold_seconds": 5})
    assert placed.status_code == 201
    order_id = placed.json()["id"]
    assert placed.json()["hold_seconds"] == 5 and "expires_at" not in placed.json()
    pending = await http.post(f"/orders/{order_id}/confirm")
    assert (pending.status_code, pending.json()["code"]) == (409, "ORDER_NOT_RESERVED")

    await services.deliver()
    reserved = (await http.get(f"/orders/{order_id}")).json()
    assert reserved["status"] == "reserved" and reserved["expires_at"].endswith("Z")
    for wrong in ("x" * 129, "", "a b", "nul\u0000", "\u202eevil", 5):
        refused = await http.post(f"/orders/{order_id}/confirm", json={"payment_reference": wrong})
        assert refused.status_code == 400, (wrong, refused.text)
    for body in ("[]", '"x"', '{"x": 1}', "{bad"):
        refused = await http.post(
            f"/orders/{order_id}/confirm",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert refused.status_code == 400, (body, refused.text)
    assert services.status(order_id) is RESERVED
    confirmed = await http.post(f"/orders/{order_id}/confirm", json={"payment_reference": "p-1"})
    again = await http.post(f"/orders/{order_id}/confirm")
    assert confirmed.status_code == again.status_code == 200
    assert confirmed.json() == again.json()
    assert confirmed.json()["status"] == "confirmed"
    assert confirmed.json()["payment_reference"] == "p-1"
    assert (await http.post("/orders/999/confirm")).status_code == 404

    late = (await http.post("/orders", json={"product_id": 1, "hold_seconds": 5})).json()["id"]
    await services.deliver()
    services.clock.advance(6)
    expired = await http.post(f"/orders/{late}/confirm")
    assert (expired.status_code, expired.json()["code"]) == (409, "ORDER_EXPIRED")
    assert "expired at" in expired.json()["error"]
    shown = (await http.get(f"/orders/{late}")).json()
    assert shown["status"] == "expired" and "expires_at" in shown
    listed = (await http.get("/orders", params={"status": "expired"})).json()
    assert [o["id"] for o in listed] == [late]

"""The order service's side of quantities and cancellations, against fakes: the use cases
and the routes (in process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.envelope import Event
from orderstack.orders.api import order_router
from orderstack.orders.domain import (
    IdempotencyKeyReused,
    OrderNotCancellable,
    OrderNotFound,
    OrderStatus,
    SettleOrder,
)
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService
from orderstack.web.errors import install_error_handlers
from tests.unit.fakes import Clock, FakeCatalog, FakeOrderDatabase, FakeProductDatabase
from tests.unit.routes import authenticated, open_access

PENDING, CONFIRMED, FAILED, CANCELLED = (
    OrderStatus.PENDING,
    OrderStatus.CONFIRMED,
    OrderStatus.FAILED,
    OrderStatus.CANCELLED,
)


async def settle(db: FakeOrderDatabase, service: OrderService, *answers: SettleOrder) -> None:
    async with db.unit_of_work() as uow:
        await service.settle_orders(uow, answers)
        await uow.commit()


# -- quantities --------------------------------------------------------------------------


async def test_an_order_keeps_its_quantity_and_order_created_carries_it(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(30), quantity=3)

    assert order_db.orders.rows[order.id].quantity == 3
    [event] = order_db.outbox.named("order.created")
    assert event.data["quantity"] == 3


async def test_same_key_with_another_quantity_is_another_request(
    order_service: OrderService,
) -> None:
    await order_service.create_order(1, Decimal(30), "key-1", quantity=3)

    with pytest.raises(IdempotencyKeyReused):
        await order_service.create_order(1, Decimal(30), "key-1", quantity=2)
    again, created = await order_service.create_order(1, Decimal(30), "key-1", quantity=3)
    assert not created and again.quantity == 3


# -- cancellation ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [PENDING, CONFIRMED])
async def test_a_pending_or_confirmed_order_is_cancelled_with_its_event(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock, status: OrderStatus
) -> None:
    order, _ = await order_service.create_order(2, Decimal(30), quantity=3)
    if status is CONFIRMED:
        await settle(order_db, order_service, SettleOrder(order.id, CONFIRMED))
    clock.advance(5)

    cancelled, now = await order_service.cancel_order(order.id)

    assert now and cancelled.status is CANCELLED and cancelled.quantity == 3
    assert order_db.orders.rows[order.id].status is CANCELLED
    [event] = order_db.outbox.named("order.cancelled")
    assert event.data == {
        "orderId": order.id,
        "items": [{"productId": 2, "quantity": 3}],
        "productId": 2,
        "quantity": 3,
        "timestamp": "2025-09-20T10:30:05Z",
    }


async def test_cancelling_again_changes_nothing_and_writes_no_event(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(30))
    await order_service.cancel_order(order.id)

    again, now = await order_service.cancel_order(order.id)

    assert not now and again.status is CANCELLED
    assert len(order_db.outbox.named("order.cancelled")) == 1


async def test_concurrent_cancellations_write_one_event(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(30))

    results = await asyncio.gather(*(order_service.cancel_order(order.id) for _ in range(5)))

    assert sorted(now for _, now in results) == [False, False, False, False, True]
    assert len(order_db.outbox.named("order.cancelled")) == 1


async def test_a_failed_order_cannot_be_cancelled(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(30))
    await settle(order_db, order_service, SettleOrder(order.id, FAILED))
    commits = order_db.commits

    with pytest.raises(OrderNotCancellable):
        await order_service.cancel_order(order.id)

    assert order_db.orders.rows[order.id].status is FAILED
    assert order_db.commits == commits and not order_db.outbox.named("order.cancelled")


async def test_cancelling_an_unknown_order_raises(order_service: OrderService) -> None:
    with pytest.raises(OrderNotFound):
        await order_service.cancel_order(404)


@pytest.mark.parametrize("answer", [CONFIRMED, FAILED])
async def test_an_answer_for_a_cancelled_order_changes_nothing(
    order_service: OrderService, order_db: FakeOrderDatabase, answer: OrderStatus
) -> None:
    order, _ = await order_service.create_order(1, Decimal(30))
    await order_service.cancel_order(order.id)

    await settle(order_db, order_service, SettleOrder(order.id, answer))

    assert order_db.orders.rows[order.id].status is CANCELLED


# -- both services, events carried by hand -----------------------------------------------


class TwoServices:
    """The order service and the product service on fakes, with the events of each outbox
    handed to the other's handler when ``deliver`` is called (the product service "down"
    until then)."""

    def __init__(self) -> None:
        self.order_db, self.product_db = FakeOrderDatabase(), FakeProductDatabase()
        self.products = ProductService(self.product_db.unit_of_work, InProcessProductCache())
        self.orders = OrderService(self.order_db.unit_of_work, FakeCatalog(known={1}))
        self._sent = {"orders": 0, "products": 0}

    async def deliver(self, *, reverse: bool = False) -> None:
        """Hand every event not delivered yet to the other service, in one batch each
        (``reverse``: newest first)."""
        for _ in range(3):  # answers to answers: until nothing is left
            for side, db, target_db, handler in (
                ("orders", self.order_db, self.product_db, OrderStockHandler(self.products)),
                ("products", self.product_db, self.order_db, OrderEventsHandler(self.orders)),
            ):
                routed = [e for e in db.outbox.events if e.name.startswith("order.")]
                fresh = routed[self._sent[side] :]
                self._sent[side] = len(routed)
                if reverse:
                    fresh.reverse()
                if fresh:
                    await self._apply(target_db, handler, fresh)

    @staticmethod
    async def _apply(db: Any, handler: Any, events: list[Event]) -> None:
        async with db.unit_of_work() as uow:
            claimed = await uow.inbox.claim(events)
            await handler.apply(uow, [handler.validate(e) for e in claimed])
            await uow.commit()

    def qty(self) -> int:
        return self.product_db.products.rows[1].qty


@pytest.fixture
async def two() -> TwoServices:
    services = TwoServices()
    await services.products.create_product("Chair", Decimal(40), 5)
    return services


async def test_cancel_of_a_confirmed_order_restocks_its_units(two: TwoServices) -> None:
    order, _ = await two.orders.create_order(1, Decimal(120), quantity=3)
    await two.deliver()
    assert (two.order_db.orders.rows[order.id].status, two.qty()) == (CONFIRMED, 2)

    await two.orders.cancel_order(order.id)
    await two.orders.cancel_order(order.id)
    await two.deliver()

    assert (two.order_db.orders.rows[order.id].status, two.qty()) == (CANCELLED, 5)


@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "cancel first"])
async def test_cancel_while_the_product_service_is_down_settles_later(
    two: TwoServices, reverse: bool
) -> None:
    """order.created and order.cancelled wait (the outbox, the queue) and arrive together,
    in either order: nothing is taken, and the order stays cancelled."""
    order, _ = await two.orders.create_order(1, Decimal(120), quantity=3)
    await two.orders.cancel_order(order.id)

    await two.deliver(reverse=reverse)

    assert (two.order_db.orders.rows[order.id].status, two.qty()) == (CANCELLED, 5)


async def test_an_answer_in_flight_when_the_order_is_cancelled_changes_nothing(
    two: TwoServices,
) -> None:
    order, _ = await two.orders.create_order(1, Decimal(120), quantity=2)
    later, _ = await two.orders.create_order(1, Decimal(120), quantity=3)
    # The product service takes the units; its answers are not delivered yet.
    async with two.product_db.unit_of_work() as uow:
        stock = OrderStockHandler(two.products)
        await stock.apply(uow, [stock.validate(e) for e in two.order_db.outbox.events])
        await uow.commit()
    await two.orders.cancel_order(order.id)

    await two.deliver()

    assert two.order_db.orders.rows[order.id].status is CANCELLED
    assert two.order_db.orders.rows[later.id].status is CONFIRMED
    assert two.qty() == 2  # order's 2 units came back; the later order holds 3


# -- routes ------------------------------------------------------------------------------


@pytest.fixture
def app(order_service: OrderService) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, "seed")
    app.state.orders = order_service
    app.include_router(order_router(open_access()))
    authenticated(app, open_access())
    return app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_post_orders_takes_a_quantity_and_defaults_to_one(
    http: httpx.AsyncClient,
) -> None:
    three = await http.post("/orders", json={"product_id": 1, "total_price": 30, "quantity": 3})
    one = await http.post("/orders", json={"productId": 1, "totalPrice": 10})

    assert three.status_code == 201 and three.json()["quantity"] == 3
    assert one.status_code == 201 and one.json()["quantity"] == 1


@pytest.mark.parametrize("quantity", [0, -1, 1001, "2", 2.0, True, None])
async def test_a_quantity_out_of_bounds_or_not_an_integer_is_400(
    http: httpx.AsyncClient, order_db: FakeOrderDatabase, quantity: object
) -> None:
    response = await http.post(
        "/orders", json={"product_id": 1, "total_price": 30, "quantity": quantity}
    )

    assert response.status_code == 400, response.text
    assert "quantity" in response.json()["error"]
    assert order_db.orders.rows == {}


async def test_post_cancel_answers_the_cancelled_order_again_and_again(
    http: httpx.AsyncClient,
) -> None:
    created = (await http.post("/orders", json={"product_id": 1, "total_price": 30})).json()

    first = await http.post(f"/orders/{created['id']}/cancel")
    second = await http.post(f"/orders/{created['id']}/cancel")

    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == {**created, "status": "cancelled"}


async def test_post_cancel_of_a_failed_order_is_409_and_of_a_missing_one_404(
    http: httpx.AsyncClient, order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    created = (await http.post("/orders", json={"product_id": 1, "total_price": 30})).json()
    await settle(order_db, order_service, SettleOrder(created["id"], FAILED))

    refused = await http.post(f"/orders/{created['id']}/cancel")
    missing = await http.post("/orders/999/cancel")

    assert refused.status_code == 409 and refused.json()["code"] == "ORDER_NOT_CANCELLABLE"
    assert missing.status_code == 404 and missing.json()["code"] == "ORDER_NOT_FOUND"

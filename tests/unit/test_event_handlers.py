"""The event handlers of both services: what they accept, what they reject as malformed,
and what applying them changes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from orderstack.messaging.envelope import Event, MalformedEvent
from orderstack.orders.domain import OrderStatus
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products.domain import ReserveStock
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService
from orderstack.wire import MAX_ID
from tests.unit.fakes import FakeOrderDatabase, FakeProductDatabase

ORDER_CREATED = {
    "orderId": 7,
    "productId": 3,
    "totalPrice": 10,
    "timestamp": "2025-09-20T10:30:00Z",
}
PRODUCT_CREATED = {
    "id": 3,
    "name": "Smartphone",
    "price": 699.99,
    "qty": 100,
    "timestamp": "2025-09-20T10:30:00Z",
}


@pytest.fixture
def reserve_handler(product_service: ProductService) -> OrderStockHandler:
    return OrderStockHandler(product_service)


@pytest.fixture
def answer_handler(order_service: OrderService) -> OrderEventsHandler:
    return OrderEventsHandler(order_service)


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = {**base, **changes}
    return {k: v for k, v in doc.items() if v is not ...}


# -- order.created (product service) -----------------------------------------------------


def test_order_created_becomes_a_stock_request(reserve_handler: OrderStockHandler) -> None:
    assert reserve_handler.validate(Event("order.created", ORDER_CREATED)) == ReserveStock(7, 3)


def test_order_created_ignores_extra_fields(reserve_handler: OrderStockHandler) -> None:
    event = Event("order.created", with_(ORDER_CREATED, coupon="X"))

    assert reserve_handler.validate(event) == ReserveStock(7, 3)


def test_largest_id_is_accepted(reserve_handler: OrderStockHandler) -> None:
    event = Event("order.created", with_(ORDER_CREATED, orderId=MAX_ID))

    assert reserve_handler.validate(event).order_id == MAX_ID


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(with_(ORDER_CREATED, orderId=...), id="missing orderId"),
        pytest.param(with_(ORDER_CREATED, productId=...), id="missing productId"),
        pytest.param({}, id="empty"),
        pytest.param(with_(ORDER_CREATED, orderId="7"), id="id as string"),
        pytest.param(with_(ORDER_CREATED, orderId=7.0), id="id as float"),
        pytest.param(with_(ORDER_CREATED, productId=True), id="bool as id"),
        pytest.param(with_(ORDER_CREATED, orderId=None), id="null id"),
        pytest.param(with_(ORDER_CREATED, orderId=0), id="zero id"),
        pytest.param(with_(ORDER_CREATED, productId=-3), id="negative id"),
        pytest.param(with_(ORDER_CREATED, orderId=MAX_ID + 1), id="id beyond BIGINT"),
        pytest.param(with_(ORDER_CREATED, productId=10**30), id="huge id"),
        pytest.param(with_(ORDER_CREATED, orderId=[7]), id="id as list"),
    ],
)
def test_malformed_order_created_is_rejected(
    reserve_handler: OrderStockHandler, payload: dict[str, Any]
) -> None:
    with pytest.raises(MalformedEvent, match="invalid order.created"):
        reserve_handler.validate(Event("order.created", payload))


@pytest.mark.parametrize("name", ["order.qty_confirmed", "product_created", "order.created.v2", ""])
def test_product_service_rejects_events_it_does_not_handle(
    reserve_handler: OrderStockHandler, name: str
) -> None:
    with pytest.raises(MalformedEvent, match="unexpected event"):
        reserve_handler.validate(Event(name, ORDER_CREATED))


async def test_applying_order_created_takes_stock_once_per_order(
    reserve_handler: OrderStockHandler,
    product_service: ProductService,
    product_db: FakeProductDatabase,
) -> None:
    product = await product_service.create_product("Phone", Decimal(1), 2)
    commands = [
        reserve_handler.validate(Event("order.created", {"orderId": i, "productId": product.id}))
        for i in (1, 2, 3, 1)
    ]

    async with product_db.unit_of_work() as uow:
        await reserve_handler.apply(uow, commands)
        await uow.commit()

    assert product_db.products.rows[product.id].qty == 0
    assert [e.name for e in product_db.outbox.events[1:]] == [
        "order.qty_confirmed",
        "order.qty_confirmed",
        "order.qty_failed",
    ]


# -- answers (order service) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status"),
    [("order.qty_confirmed", OrderStatus.CONFIRMED), ("order.qty_failed", OrderStatus.FAILED)],
)
def test_answers_become_settle_commands(
    answer_handler: OrderEventsHandler, name: str, status: OrderStatus
) -> None:
    payload = {"orderId": 7, "reason": "product_not_found_or_unavailable", "timestamp": "x"}

    command = answer_handler.validate(Event(name, payload))
    assert (command.order_id, command.status) == (7, status)
    if status is OrderStatus.FAILED:
        assert command.failure is not None
        assert command.failure.reason == "product_not_found_or_unavailable"


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        pytest.param("order.qty_confirmed", {}, id="answer without orderId"),
        pytest.param("order.qty_failed", {"orderId": "7"}, id="answer with string id"),
        pytest.param("order.qty_confirmed", {"orderId": True}, id="answer with bool id"),
        pytest.param("order.qty_confirmed", {"orderId": 0}, id="answer with zero id"),
        pytest.param("order.qty_confirmed", {"orderId": -1}, id="answer with negative id"),
        pytest.param("order.qty_confirmed", {"orderId": 2**64}, id="answer with huge id"),
        pytest.param("order.qty_failed", {"orderId": None}, id="answer with null id"),
    ],
)
def test_malformed_answer_is_rejected(
    answer_handler: OrderEventsHandler, name: str, payload: dict[str, Any]
) -> None:
    with pytest.raises(MalformedEvent, match=f"invalid {name}"):
        answer_handler.validate(Event(name, payload))


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        # product_created is no longer consumed by the order service (it never writes the
        # product cache): even a well-formed one is an event it does not handle.
        pytest.param("product_created", PRODUCT_CREATED, id="product_created"),
        pytest.param("product_created", {"orderId": 7}, id="product_created with an orderId"),
        pytest.param("order.created", {"orderId": 7}, id="order.created"),
        pytest.param("order.qty_unknown", {"orderId": 7}, id="order.qty_unknown"),
        pytest.param("product_deleted", {"orderId": 7}, id="product_deleted"),
        pytest.param("", {"orderId": 7}, id="empty name"),
    ],
)
def test_order_service_rejects_events_it_does_not_handle(
    answer_handler: OrderEventsHandler, name: str, payload: dict[str, Any]
) -> None:
    with pytest.raises(MalformedEvent, match="unexpected event"):
        answer_handler.validate(Event(name, payload))


async def test_applying_answers_settles_each_pending_order(
    answer_handler: OrderEventsHandler, order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    confirmed, _ = await order_service.create_order(1, Decimal(10))
    failed, _ = await order_service.create_order(2, Decimal(20))
    untouched, _ = await order_service.create_order(1, Decimal(30))
    commands = [
        answer_handler.validate(Event("order.qty_confirmed", {"orderId": confirmed.id})),
        answer_handler.validate(Event("order.qty_failed", {"orderId": failed.id})),
    ]

    async with order_db.unit_of_work() as uow:
        await answer_handler.apply(uow, commands)
        await uow.commit()

    assert order_db.orders.rows[confirmed.id].status is OrderStatus.CONFIRMED
    assert order_db.orders.rows[failed.id].status is OrderStatus.FAILED
    assert order_db.orders.rows[untouched.id].status is OrderStatus.PENDING


async def test_answers_applied_in_a_rolled_back_batch_settle_nothing(
    answer_handler: OrderEventsHandler, order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))
    command = answer_handler.validate(Event("order.qty_confirmed", {"orderId": order.id}))

    async with order_db.unit_of_work() as uow:
        await answer_handler.apply(uow, [command])

    assert order_db.orders.rows[order.id].status is OrderStatus.PENDING

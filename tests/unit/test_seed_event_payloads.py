"""The bytes the seed's services put on the wire, decoded by the one codec and taken by our
handlers: the Go order service's ``order.created`` (``createdAt``, no ``timestamp``) and the
NestJS product service's answers (``order.qty_confirmed`` as ``{"orderId"}`` alone,
``order.qty_failed`` without ``reason``). The end-to-end twin is tests/e2e/test_seed_clients.py."""

from __future__ import annotations

import orjson
import pytest

from orderstack.messaging.envelope import decode
from orderstack.orders.domain import OrderStatus, SettleOrder
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products.domain import ReserveStock
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService

GO_ORDER_CREATED = {
    "orderId": 7,
    "productId": 3,
    "totalPrice": 699.99,
    "createdAt": "2025-09-20T10:30:00Z",
}


def nest(pattern: str, data: dict[str, object]) -> bytes:
    """What NestJS's ClientProxy.emit sends: the envelope, no message_id."""
    return orjson.dumps({"pattern": pattern, "data": data})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(orjson.dumps(GO_ORDER_CREATED), id="bare payload"),
        pytest.param(nest("order.created", GO_ORDER_CREATED), id="NestJS envelope"),
    ],
)
def test_go_order_created_with_created_at_takes_stock(
    product_service: ProductService, body: bytes
) -> None:
    event = decode(body, message_id=None, routing_key="order.created")

    assert OrderStockHandler(product_service).validate(event) == ReserveStock(7, 3)


@pytest.mark.parametrize(
    ("body", "command"),
    [
        pytest.param(
            nest("order.qty_confirmed", {"orderId": 7}),
            SettleOrder(7, OrderStatus.CONFIRMED),
            id="qty_confirmed as orderId alone",
        ),
        pytest.param(
            nest("order.qty_failed", {"orderId": 8, "timestamp": "2025-09-20T10:30:00Z"}),
            SettleOrder(8, OrderStatus.FAILED),
            id="qty_failed without reason",
        ),
        pytest.param(
            nest("order.qty_failed", {"orderId": 9}),
            SettleOrder(9, OrderStatus.FAILED),
            id="qty_failed as orderId alone",
        ),
    ],
)
def test_nestjs_answers_settle_orders(
    order_service: OrderService, body: bytes, command: SettleOrder
) -> None:
    event = decode(body, message_id=None, routing_key=None)

    assert OrderEventsHandler(order_service).validate(event) == command


def test_the_same_seed_message_delivered_twice_is_recognised_as_one_event() -> None:
    body = nest("order.qty_confirmed", {"orderId": 7})

    first = decode(body, message_id=None, routing_key="order.qty_confirmed")
    again = decode(body, message_id=None, routing_key="order.qty_confirmed")

    assert first.id == again.id

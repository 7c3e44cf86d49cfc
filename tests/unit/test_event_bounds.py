"""Every number an event carries is bounded as the HTTP API bounds it (orderstack/events.py):
a line's units 1 to 1000 and at most 100 lines (POST /orders), ids 1 to 2^63 - 1, one
product's units in an answer at most 100 x 1000. An event past a bound, even from a trusted
publisher, is dead-lettered by the real consumer with the reason and changes nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from orderstack.events import (
    MAX_ORDER_LINES,
    MAX_PRODUCT_UNITS,
    OrderQtyConfirmed,
    OrderQtyFailed,
)
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.envelope import Event
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE
from orderstack.orders.domain import OrderStatus
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService
from orderstack.quantities import MAX_ORDER_QUANTITY
from orderstack.wire import MAX_ID
from tests.unit.fakes import FakeDelivery, FakeOrderDatabase, FakeProductDatabase

TIMESTAMP = "2026-12-05T10:30:00Z"


def _line(product_id: int, quantity: int) -> dict[str, int]:
    return {"productId": product_id, "quantity": quantity}


@pytest.fixture
async def product_id(product_service: ProductService) -> int:
    return (await product_service.create_product("Bounded", Decimal(5), 100_000)).id


def _breaches(product_id: int) -> dict[str, dict[str, Any]]:
    return {
        "a line's quantity past 1000": {
            "orderId": 1,
            "items": [_line(product_id, MAX_ORDER_QUANTITY + 1)],
        },
        "the seed's one-line quantity past 1000": {
            "orderId": 2,
            "productId": product_id,
            "quantity": MAX_ORDER_QUANTITY + 1,
        },
        "a quantity of 0": {"orderId": 3, "items": [_line(product_id, 0)]},
        "more than 100 lines": {
            "orderId": 4,
            "items": [_line(product_id, 1)] * (MAX_ORDER_LINES + 1),
        },
        "no lines": {"orderId": 5, "items": []},
        "an order id of 0": {"orderId": 0, "items": [_line(product_id, 1)]},
        "an order id past 2^63 - 1": {"orderId": MAX_ID + 1, "items": [_line(product_id, 1)]},
        "a product id past 2^63 - 1": {"orderId": 6, "items": [_line(MAX_ID + 1, 1)]},
        "a quantity as text": {"orderId": 7, "items": [{"productId": product_id, "quantity": "9"}]},
    }


@pytest.mark.parametrize("name", ["order.created", "order.cancelled"])
async def test_an_order_event_past_the_http_bounds_is_dead_lettered_and_takes_nothing(
    product_db: FakeProductDatabase,
    product_service: ProductService,
    product_id: int,
    name: str,
) -> None:
    consumer = EventConsumer(
        InProcessBus(),
        PRODUCT_SERVICE_QUEUE,
        product_db.unit_of_work,
        OrderStockHandler(product_service),
    )
    breaches = _breaches(product_id)
    deliveries = {
        why: FakeDelivery.of(Event(name, {**data, "timestamp": TIMESTAMP}))
        for why, data in breaches.items()
    }

    await consumer.process(list(deliveries.values()))

    for why, delivery in deliveries.items():
        assert delivery.outcome == "dead_letter", why
        assert (delivery.reason or "").startswith(f"invalid {name}"), (why, delivery.reason)
    assert product_db.products.rows[product_id].qty == 100_000
    assert not product_db.outbox.events[1:]  # no answer (the first is product_created)


async def test_the_largest_order_within_the_bounds_is_taken(
    product_db: FakeProductDatabase, product_service: ProductService, product_id: int
) -> None:
    """The control: 100 lines of 1000 units each on one product, the most POST /orders
    allows, is an order like any other."""
    consumer = EventConsumer(
        InProcessBus(),
        PRODUCT_SERVICE_QUEUE,
        product_db.unit_of_work,
        OrderStockHandler(product_service),
    )
    largest = Event(
        "order.created",
        {"orderId": 9, "items": [_line(product_id, MAX_ORDER_QUANTITY)] * MAX_ORDER_LINES},
    )
    delivery = FakeDelivery.of(largest)

    await consumer.process([delivery])

    assert delivery.outcome == "ack"
    assert product_db.products.rows[product_id].qty == 100_000 - MAX_PRODUCT_UNITS
    confirmed = product_db.outbox.events[-1]
    assert confirmed.name == "order.qty_confirmed"
    assert confirmed.data["items"][0]["quantity"] == MAX_PRODUCT_UNITS  # within its bound


@pytest.mark.parametrize(
    "data",
    [
        {"items": [{"productId": 1, "quantity": MAX_PRODUCT_UNITS + 1, "unitPrice": 1}]},
        {"items": [{"productId": 1, "quantity": 1, "unitPrice": 1}] * (MAX_ORDER_LINES + 1)},
        {"items": [{"productId": MAX_ID + 1, "quantity": 1, "unitPrice": 1}]},
        {"totalPrice": 10_000_000_000},
    ],
    ids=["units-past-100x1000", "more-than-100-lines", "product-id-past-max", "money-past-max"],
)
async def test_a_confirmation_past_the_bounds_is_dead_lettered_and_settles_nothing(
    order_db: FakeOrderDatabase, order_service: OrderService, data: dict[str, Any]
) -> None:
    consumer = EventConsumer(
        InProcessBus(),
        ORDER_SERVICE_QUEUE,
        order_db.unit_of_work,
        OrderEventsHandler(order_service),
    )
    order, _ = await order_service.create_order(1, Decimal(10))
    delivery = FakeDelivery.of(Event("order.qty_confirmed", {"orderId": order.id, **data}))

    await consumer.process([delivery])

    assert delivery.outcome == "dead_letter"
    assert (delivery.reason or "").startswith("invalid order.qty_confirmed")
    assert (await order_service.get_order(order.id)).status is OrderStatus.PENDING


async def test_a_short_line_past_the_bounds_is_dead_lettered(
    order_db: FakeOrderDatabase, order_service: OrderService
) -> None:
    consumer = EventConsumer(
        InProcessBus(),
        ORDER_SERVICE_QUEUE,
        order_db.unit_of_work,
        OrderEventsHandler(order_service),
    )
    order, _ = await order_service.create_order(1, Decimal(10))
    line = {"productId": 1, "requested": MAX_PRODUCT_UNITS + 1, "available": 0}
    delivery = FakeDelivery.of(
        Event("order.qty_failed", {"orderId": order.id, "reason": "x", "lines": [line]})
    )

    await consumer.process([delivery])

    assert delivery.outcome == "dead_letter"
    assert (await order_service.get_order(order.id)).status is OrderStatus.PENDING


def test_the_product_service_cannot_publish_an_answer_past_the_bounds() -> None:
    """What we publish is held to the same bounds (the payload models are strict)."""
    item = {"productId": 1, "quantity": MAX_PRODUCT_UNITS + 1, "unitPrice": 1, "lineTotal": 1}
    with pytest.raises(ValidationError):
        OrderQtyConfirmed(orderId=1, items=[item], timestamp=TIMESTAMP)  # type: ignore[list-item]
    short = {"productId": 1, "requested": MAX_PRODUCT_UNITS + 1, "available": 0}
    with pytest.raises(ValidationError):
        OrderQtyFailed(
            orderId=1,
            reason="product_not_found_or_unavailable",
            lines=[short],  # type: ignore[list-item]
            timestamp=TIMESTAMP,
        )

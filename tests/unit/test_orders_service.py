"""The order service's use cases against fakes: create, read, settle, warm the cache."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from orderstack.orders.domain import (
    CatalogUnavailable,
    IdempotencyKeyReused,
    OrderNotFound,
    OrderStatus,
    SettleOrder,
    UnknownProduct,
)
from orderstack.orders.service import OrderService
from tests.unit.fakes import START, Clock, FakeCatalog, FakeOrderDatabase


async def settle(db: FakeOrderDatabase, service: OrderService, *answers: SettleOrder) -> None:
    async with db.unit_of_work() as uow:
        await service.settle_orders(uow, answers)
        await uow.commit()


# -- create ------------------------------------------------------------------------------


async def test_create_order_stores_pending_order_and_its_order_created_event(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, created = await order_service.create_order(1, Decimal("1500"))

    assert created is True
    assert order.status is OrderStatus.PENDING
    assert order_db.orders.rows == {order.id: order}
    assert order.product_id == 1
    assert order.total_price == Decimal("1500")
    assert order.created_at == START
    [event] = order_db.outbox.events
    assert event.name == "order.created"
    assert event.data == {
        "orderId": order.id,
        "items": [{"productId": 1, "quantity": 1}],
        "productId": 1,
        "totalPrice": 1500,
        "agreedTotal": 1500,  # the strict price check: the total the client agreed to
        "quantity": 1,
        "timestamp": "2025-09-20T10:30:00Z",
    }


async def test_order_created_event_carries_the_exact_price(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(2, Decimal("19.99"))

    assert order_db.orders.rows[order.id].total_price == Decimal("19.99")
    [event] = order_db.outbox.events
    assert event.data["totalPrice"] == 19.99


async def test_each_order_gets_its_own_id_and_event_id(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    first, _ = await order_service.create_order(1, Decimal(10))
    second, _ = await order_service.create_order(1, Decimal(10))

    assert first.id != second.id
    assert len({e.id for e in order_db.outbox.events}) == 2
    assert [e.data["orderId"] for e in order_db.outbox.events] == [first.id, second.id]


async def test_unknown_product_is_rejected_and_nothing_is_written(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    with pytest.raises(UnknownProduct):
        await order_service.create_order(999, Decimal(10))

    assert order_db.orders.rows == {}
    assert order_db.outbox.events == []


async def test_catalog_unavailable_writes_nothing(
    order_service: OrderService, order_db: FakeOrderDatabase, catalog: FakeCatalog
) -> None:
    catalog.unavailable = True

    with pytest.raises(CatalogUnavailable):
        await order_service.create_order(1, Decimal(10), request_id="key-1")

    assert order_db.orders.rows == {}
    assert order_db.orders.request_ids == {}
    assert order_db.outbox.events == []


async def test_failed_commit_leaves_neither_order_nor_event(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order_db.commit_failures.append(RuntimeError("disk full"))

    with pytest.raises(RuntimeError):
        await order_service.create_order(1, Decimal(10))

    assert order_db.orders.rows == {}
    assert order_db.outbox.events == []


# -- idempotency -------------------------------------------------------------------------


async def test_same_idempotency_key_returns_the_first_order(
    order_service: OrderService, order_db: FakeOrderDatabase, catalog: FakeCatalog
) -> None:
    first, first_created = await order_service.create_order(1, Decimal(10), request_id="k")
    calls_after_first = catalog.calls
    again, again_created = await order_service.create_order(1, Decimal(10), request_id="k")

    assert (first_created, again_created) == (True, False)
    assert again == first
    assert list(order_db.orders.rows) == [first.id]
    assert len(order_db.outbox.events) == 1
    assert catalog.calls == calls_after_first  # a replay does not ask the product service


async def test_same_idempotency_key_with_a_different_body_is_refused(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    """More cases in test_orders_idempotency.py."""
    await order_service.create_order(1, Decimal(10), request_id="k")

    with pytest.raises(IdempotencyKeyReused):
        await order_service.create_order(2, Decimal(99), request_id="k")

    assert len(order_db.orders.rows) == 1
    assert len(order_db.outbox.events) == 1


async def test_replay_is_answered_even_when_the_product_service_is_down(
    order_service: OrderService, catalog: FakeCatalog
) -> None:
    first, _ = await order_service.create_order(1, Decimal(10), request_id="k")
    catalog.unavailable = True

    again, created = await order_service.create_order(1, Decimal(10), request_id="k")

    assert (again, created) == (first, False)


async def test_concurrent_twins_with_one_idempotency_key_create_one_order(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    results = await asyncio.gather(
        *(order_service.create_order(1, Decimal(10), request_id="twin") for _ in range(5))
    )

    orders = {order for order, _ in results}
    assert len(orders) == 1
    assert sorted(created for _, created in results) == [False] * 4 + [True]
    assert len(order_db.orders.rows) == 1
    assert len(order_db.outbox.events) == 1


async def test_different_idempotency_keys_create_different_orders(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    await order_service.create_order(1, Decimal(10), request_id="a")
    await order_service.create_order(1, Decimal(10), request_id="b")

    assert len(order_db.orders.rows) == 2
    assert len(order_db.outbox.events) == 2


# -- reads -------------------------------------------------------------------------------


async def test_get_order_returns_the_stored_order(order_service: OrderService) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))

    assert await order_service.get_order(order.id) == order


async def test_get_missing_order_raises_order_not_found(order_service: OrderService) -> None:
    with pytest.raises(OrderNotFound) as caught:
        await order_service.get_order(42)

    assert caught.value.order_id == 42


async def test_orders_for_product_are_oldest_first_and_only_that_products(
    order_service: OrderService, clock: Clock
) -> None:
    first, _ = await order_service.create_order(1, Decimal(10))
    clock.advance()
    await order_service.create_order(2, Decimal(10))
    clock.advance()
    second, _ = await order_service.create_order(1, Decimal(20))

    assert (await order_service.orders_for_product(1, limit=100)).orders == [first, second]
    assert (await order_service.orders_for_product(1, limit=1)).orders == [first]


async def test_orders_for_a_product_without_orders_is_an_empty_list(
    order_service: OrderService,
) -> None:
    assert (await order_service.orders_for_product(1, limit=100)).orders == []


# -- settling ----------------------------------------------------------------------------


async def test_answer_moves_pending_order_once(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))

    await settle(order_db, order_service, SettleOrder(order.id, OrderStatus.CONFIRMED))

    assert (await order_service.get_order(order.id)).status is OrderStatus.CONFIRMED


async def test_failed_answer_moves_pending_order_to_failed(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))

    await settle(order_db, order_service, SettleOrder(order.id, OrderStatus.FAILED))

    assert (await order_service.get_order(order.id)).status is OrderStatus.FAILED


async def test_second_answer_for_a_settled_order_changes_nothing(
    order_service: OrderService, order_db: FakeOrderDatabase, clock: Clock
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))
    clock.advance()
    await settle(order_db, order_service, SettleOrder(order.id, OrderStatus.CONFIRMED))
    settled_at = order_db.orders.updated_at[order.id]
    clock.advance()

    await settle(order_db, order_service, SettleOrder(order.id, OrderStatus.FAILED))
    await settle(order_db, order_service, SettleOrder(order.id, OrderStatus.CONFIRMED))

    assert order_db.orders.rows[order.id].status is OrderStatus.CONFIRMED
    assert order_db.orders.updated_at[order.id] == settled_at


async def test_answers_in_one_batch_settle_each_order_once(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    a, _ = await order_service.create_order(1, Decimal(10))
    b, _ = await order_service.create_order(1, Decimal(10))

    await settle(
        order_db,
        order_service,
        SettleOrder(a.id, OrderStatus.FAILED),
        SettleOrder(b.id, OrderStatus.CONFIRMED),
        SettleOrder(a.id, OrderStatus.CONFIRMED),
    )

    assert order_db.orders.rows[a.id].status is OrderStatus.FAILED
    assert order_db.orders.rows[b.id].status is OrderStatus.CONFIRMED


async def test_answer_for_an_unknown_order_changes_nothing(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))

    await settle(order_db, order_service, SettleOrder(order.id + 100, OrderStatus.CONFIRMED))

    assert set(order_db.orders.rows) == {order.id}
    assert order_db.orders.rows[order.id].status is OrderStatus.PENDING


async def test_settling_writes_no_event(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))

    await settle(order_db, order_service, SettleOrder(order.id, OrderStatus.CONFIRMED))

    assert [e.name for e in order_db.outbox.events] == ["order.created"]

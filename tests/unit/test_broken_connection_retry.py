"""A read, or a cancel that had not reached its COMMIT, meets a pooled connection the server
had dropped: the use case runs its transaction once more, on a fresh connection, and the
client gets its answer instead of a 503. A break during COMMIT, a second break, or any
other failure is not retried."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncmy.errors
import pytest
from sqlalchemy.exc import OperationalError

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.orders.domain import OrderStatus
from orderstack.orders.service import OrderService
from orderstack.products.service import ProductService
from orderstack.storage.errors import CommitOutcomeUnknown
from tests.unit.fakes import (
    Clock,
    FakeCatalog,
    FakeOrderDatabase,
    FakeOrderUnitOfWork,
    FakeProductDatabase,
    FakeProductUnitOfWork,
)


def gone_away() -> OperationalError:
    """What the driver raises on the first statement over a connection MariaDB killed."""
    return OperationalError(
        "SELECT", {}, asyncmy.errors.OperationalError(2006, "MySQL server has gone away")
    )


class _Breaking:
    """A repository whose ``method`` raises ``errors`` one call each, then works."""

    def __init__(self, inner: Any, method: str, errors: list[Exception]) -> None:
        self._inner, self._method, self._errors = inner, method, errors

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._method or not self._errors:
            return attribute

        async def breaks(*args: Any, **kwargs: Any) -> Any:
            raise self._errors.pop(0)

        return breaks


class OrderConnections:
    """``order_db``'s unit of work factory; each error in ``errors`` is met, in turn, by the
    next call of the repository's ``method`` (one transaction each)."""

    def __init__(self, db: FakeOrderDatabase, method: str, *errors: Exception) -> None:
        self.db, self.method, self.errors = db, method, list(errors)
        self.transactions = 0

    def __call__(self) -> FakeOrderUnitOfWork:
        self.transactions += 1
        uow = self.db.unit_of_work()
        uow.orders = _Breaking(uow.orders, self.method, self.errors)  # type: ignore[assignment]
        return uow


@pytest.fixture
def service_on(order_db: FakeOrderDatabase, catalog: FakeCatalog, clock: Clock) -> Any:
    def make(method: str, *errors: Exception) -> tuple[OrderService, OrderConnections]:
        connections = OrderConnections(order_db, method, *errors)
        return OrderService(connections, catalog, clock), connections

    return make


async def test_a_read_on_a_dead_pooled_connection_is_answered_from_a_fresh_one(
    order_service: OrderService, service_on: Any
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))
    service, connections = service_on("get", gone_away())

    assert await service.get_order(order.id) == order
    assert connections.transactions == 2


async def test_a_list_on_a_dead_pooled_connection_is_answered_from_a_fresh_one(
    order_service: OrderService, service_on: Any
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))
    service, _ = service_on("find", gone_away())

    page = await service.list_orders(limit=10)

    assert page.orders == [order]


async def test_a_cancel_broken_before_its_commit_runs_again_and_cancels_once(
    order_service: OrderService, order_db: FakeOrderDatabase, service_on: Any
) -> None:
    """The connection breaks after the order was read, at the UPDATE: nothing of that
    transaction was kept, so it runs again; one order.cancelled, counted once."""
    order, _ = await order_service.create_order(1, Decimal(10))
    service, connections = service_on("move_many", gone_away())

    cancelled, now = await service.cancel_order(order.id)

    assert (cancelled.status, now) == (OrderStatus.CANCELLED, True)
    assert connections.transactions == 2
    assert order_db.orders.rows[order.id].status is OrderStatus.CANCELLED
    assert len(order_db.outbox.named("order.cancelled")) == 1
    assert service.entered[OrderStatus.CANCELLED] == 1


async def test_a_break_during_commit_is_not_retried(
    order_service: OrderService, order_db: FakeOrderDatabase, service_on: Any
) -> None:
    """The COMMIT may have happened: running the cancel again is not for this helper to
    decide (the client gets the 503 that says so, and may retry: cancel is idempotent)."""
    order, _ = await order_service.create_order(1, Decimal(10))
    service, connections = service_on("get")
    order_db.commit_failures.append(CommitOutcomeUnknown("lost during COMMIT"))

    with pytest.raises(CommitOutcomeUnknown):
        await service.cancel_order(order.id)
    assert connections.transactions == 1


async def test_only_one_retry_and_only_for_a_broken_connection(
    order_service: OrderService, service_on: Any
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))
    twice, twice_connections = service_on("get", gone_away(), gone_away())
    lock_wait = OperationalError(
        "SELECT", {}, asyncmy.errors.OperationalError(1205, "Lock wait timeout exceeded")
    )
    other, other_connections = service_on("get", lock_wait)

    with pytest.raises(OperationalError):
        await twice.get_order(order.id)
    with pytest.raises(OperationalError):
        await other.get_order(order.id)

    assert (twice_connections.transactions, other_connections.transactions) == (2, 1)


async def test_an_uncached_product_read_on_a_dead_pooled_connection_is_answered(
    product_service: ProductService, product_db: FakeProductDatabase, clock: Clock
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 3)
    get_errors: list[Exception] = [gone_away()]
    page_errors: list[Exception] = [gone_away()]

    def connections() -> FakeProductUnitOfWork:
        uow = product_db.unit_of_work()
        uow.products = _Breaking(uow.products, "get", get_errors)  # type: ignore[assignment]
        return uow

    def page_connections() -> FakeProductUnitOfWork:
        uow = product_db.unit_of_work()
        uow.products = _Breaking(uow.products, "page", page_errors)  # type: ignore[assignment]
        return uow

    empty_cache = InProcessProductCache()
    reader = ProductService(connections, empty_cache, clock)
    lister = ProductService(page_connections, empty_cache, clock)

    assert (await reader.get_product(product.id)).id == product.id
    products, total = await lister.list_products(10, 0)
    assert ([p.id for p in products], total) == ([product.id], 1)
    assert get_errors == page_errors == []  # each met its broken connection once

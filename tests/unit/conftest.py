"""Fixtures for the unit tests: the services wired to the in-memory fakes."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.orders.service import OrderService
from orderstack.products.service import ProductService
from tests.unit.fakes import Clock, FakeCatalog, FakeOrderDatabase, FakeProductDatabase


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def order_db() -> FakeOrderDatabase:
    return FakeOrderDatabase()


@pytest.fixture
def catalog() -> FakeCatalog:
    return FakeCatalog(known={1, 2})


@pytest.fixture
def order_service(order_db: FakeOrderDatabase, catalog: FakeCatalog, clock: Clock) -> OrderService:
    return OrderService(order_db.unit_of_work, catalog, clock)


@pytest.fixture
def product_db() -> FakeProductDatabase:
    return FakeProductDatabase()


@pytest.fixture
def cache() -> InProcessProductCache:
    return InProcessProductCache()


@pytest.fixture
def product_service(
    product_db: FakeProductDatabase, cache: InProcessProductCache, clock: Clock
) -> ProductService:
    return ProductService(product_db.unit_of_work, cache, clock)


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The path of every request a FastAPI route handled meanwhile (the hot paths of
    web/hot.py answer theirs without one)."""
    paths: list[str] = []
    handle = APIRoute.handle

    async def counted(route: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        paths.append(route.path)
        await handle(route, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", counted)
    return paths

"""Listing orders: `GET /orders` (filters, cursor pages) and `GET /orders/product/{id}`
(a plain array that never cuts silently). Routes run in process on the service with its
fakes; the service's paging is tested on its own first."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from orderstack.orders.api import order_router
from orderstack.orders.domain import Order, OrderStatus
from orderstack.orders.service import OrderPage, OrderService
from orderstack.web.errors import install_error_handlers
from tests.unit.fakes import START, FakeOrderDatabase
from tests.unit.routes import authenticated, open_access


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


async def place(service: OrderService, product_ids: list[int]) -> list[Order]:
    return [(await service.create_order(p, Decimal(p)))[0] for p in product_ids]


async def settle(order_db: FakeOrderDatabase, status: OrderStatus, ids: list[int]) -> None:
    async with order_db.unit_of_work() as uow:
        await uow.orders.move_many(ids, status, {OrderStatus.PENDING}, START)
        await uow.commit()


NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


def next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = NEXT.match(link)
    assert match, link
    return match.group(1)


async def walk(http: httpx.AsyncClient, url: str) -> tuple[list[dict[str, Any]], int]:
    """Every order from ``url`` on, following the Link headers; and how many pages."""
    seen: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        response = await http.get(next_url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert isinstance(page, list)
        seen += page
        pages += 1
        next_url = next_link(response)
        if next_url is not None:
            assert page, "a page with a next link is never empty"
    return seen, pages


# -- the service -------------------------------------------------------------------------


async def test_pages_cover_every_order_once_in_id_order(order_service: OrderService) -> None:
    placed = await place(order_service, [1, 2] * 5)
    pages: list[OrderPage] = []
    after = 0
    while True:
        page = await order_service.list_orders(after=after, limit=3)
        pages.append(page)
        if page.next_after is None:
            break
        assert page.next_after == page.orders[-1].id
        after = page.next_after

    assert [len(p.orders) for p in pages] == [3, 3, 3, 1]
    assert [o for p in pages for o in p.orders] == placed


async def test_a_full_last_page_says_there_is_no_next(order_service: OrderService) -> None:
    await place(order_service, [1] * 4)

    first = await order_service.list_orders(limit=2)
    last = await order_service.list_orders(after=first.next_after or 0, limit=2)

    assert first.next_after == first.orders[-1].id
    assert len(last.orders) == 2 and last.next_after is None


async def test_filters_combine(order_service: OrderService, order_db: FakeOrderDatabase) -> None:
    placed = await place(order_service, [1, 2, 1, 2, 1])
    await settle(order_db, OrderStatus.CONFIRMED, [placed[0].id, placed[1].id, placed[4].id])

    def ids(page: OrderPage) -> list[int]:
        return [o.id for o in page.orders]

    confirmed = await order_service.list_orders(status=OrderStatus.CONFIRMED, limit=10)
    of_1 = await order_service.list_orders(product_id=1, limit=10)
    both = await order_service.list_orders(status=OrderStatus.CONFIRMED, product_id=1, limit=10)
    none = await order_service.list_orders(status=OrderStatus.FAILED, limit=10)

    assert ids(confirmed) == [placed[0].id, placed[1].id, placed[4].id]
    assert ids(of_1) == [placed[0].id, placed[2].id, placed[4].id]
    assert ids(both) == [placed[0].id, placed[4].id]
    assert none == OrderPage([], None)


# -- GET /orders -------------------------------------------------------------------------


async def test_list_orders_is_an_array_oldest_first_with_the_default_page_size(
    http: httpx.AsyncClient, order_service: OrderService
) -> None:
    placed = await place(order_service, [1] * 101)

    response = await http.get("/orders")

    assert response.status_code == 200
    body = response.json()
    assert [o["id"] for o in body] == [o.id for o in placed[:100]]
    assert set(body[0]) >= {"id", "product_id", "total_price", "status", "created_at"}
    assert next_link(response) == f"/orders?after={placed[99].id}&limit=100"


async def test_walking_the_links_returns_every_order_once_keeping_the_filters(
    http: httpx.AsyncClient, order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    placed = await place(order_service, [1, 2, 1] * 7)
    confirmed = [o.id for o in placed[::2]]
    await settle(order_db, OrderStatus.CONFIRMED, confirmed)
    expected = [o.id for o in placed if o.id in confirmed and o.product_id == 1]

    seen, pages = await walk(http, "/orders?status=confirmed&product_id=1&limit=3")

    assert [o["id"] for o in seen] == expected
    assert {(o["status"], o["product_id"]) for o in seen} == {("confirmed", 1)}
    assert pages == -(-len(expected) // 3)

    everything, _ = await walk(http, "/orders?limit=4")
    assert [o["id"] for o in everything] == [o.id for o in placed]


async def test_no_orders_is_an_empty_array_without_a_link(http: httpx.AsyncClient) -> None:
    response = await http.get("/orders?status=cancelled")

    assert response.status_code == 200
    assert response.json() == []
    assert "link" not in response.headers


async def test_after_starts_past_the_given_id(
    http: httpx.AsyncClient, order_service: OrderService
) -> None:
    placed = await place(order_service, [1] * 3)

    response = await http.get(f"/orders?after={placed[0].id}")

    assert [o["id"] for o in response.json()] == [placed[1].id, placed[2].id]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        pytest.param("status=shipped", "status", id="unknown status"),
        pytest.param("status=", "status", id="empty status"),
        pytest.param("product_id=0", "product_id", id="product id 0"),
        pytest.param("product_id=abc", "product_id", id="product id not a number"),
        pytest.param(f"product_id={2**63}", "product_id", id="product id too big"),
        pytest.param("after=-1", "after", id="negative cursor"),
        pytest.param("after=1.5", "after", id="fractional cursor"),
        pytest.param("limit=0", "limit", id="limit 0"),
        pytest.param("limit=1001", "limit", id="limit over 1000"),
    ],
)
async def test_bad_filters_are_400_naming_the_parameter(
    http: httpx.AsyncClient, query: str, named: str
) -> None:
    response = await http.get(f"/orders?{query}")

    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "code", "timestamp"}
    assert body["code"] == "VALIDATION_ERROR"
    assert body["error"].startswith(f"{named}:")


async def test_every_status_is_a_filter(http: httpx.AsyncClient) -> None:
    for status in OrderStatus:
        response = await http.get(f"/orders?status={status.value}")
        assert response.status_code == 200, (status, response.text)


async def test_limit_1000_is_allowed(http: httpx.AsyncClient, order_service: OrderService) -> None:
    await place(order_service, [1] * 3)
    response = await http.get("/orders?limit=1000")
    assert response.status_code == 200 and len(response.json()) == 3


# -- GET /orders/product/{id} ------------------------------------------------------------


async def test_orders_of_a_product_past_the_limit_say_so_with_a_link(
    http: httpx.AsyncClient, order_service: OrderService
) -> None:
    placed = [o.id for o in await place(order_service, [1, 2] * 5) if o.product_id == 1]

    response = await http.get("/orders/product/1?limit=2")

    assert response.status_code == 200
    assert [o["id"] for o in response.json()] == placed[:2]
    assert next_link(response) == f"/orders/product/1?after={placed[1]}&limit=2"
    seen, pages = await walk(http, "/orders/product/1?limit=2")
    assert [o["id"] for o in seen] == placed
    assert pages == 3


async def test_the_default_limit_of_1000_is_no_longer_a_silent_cut(
    http: httpx.AsyncClient, order_service: OrderService
) -> None:
    placed = await place(order_service, [1] * 1001)

    first = await http.get("/orders/product/1")

    assert len(first.json()) == 1000
    assert next_link(first) == f"/orders/product/1?after={placed[999].id}&limit=1000"
    rest, pages = await walk(http, "/orders/product/1")
    assert [o["id"] for o in rest] == [o.id for o in placed] and pages == 2


async def test_orders_of_a_product_that_fit_have_no_link(
    http: httpx.AsyncClient, order_service: OrderService
) -> None:
    await place(order_service, [1, 1])

    response = await http.get("/orders/product/1?limit=2")

    assert len(response.json()) == 2
    assert "link" not in response.headers
    empty = await http.get("/orders/product/2")
    assert empty.json() == [] and "link" not in empty.headers


async def test_a_bad_cursor_on_a_products_orders_is_400(http: httpx.AsyncClient) -> None:
    response = await http.get("/orders/product/1?after=-5")

    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"

"""Ids and counts in paths and queries are digits only: anything Python's int() would also
read (a sign, an underscore, spaces, a decimal point) is a 400 that acts on nothing. Both
services in process on the embedded adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.unit.embedded_apps import running_apps

NOT_DIGITS = [
    "1_0",
    "+10",
    "%2010",
    "10%0A",
    "10.0",
    "1e1",
    "%EF%BC%91%EF%BC%90",
]  # last: fullwidth 10


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with running_apps(tmp_path) as running:
        for i in range(10):
            created = await running.product_http.post(
                "/products", json={"name": f"p{i}", "price": 1, "qty": 50}
            )
            assert created.status_code == 201
        for _ in range(10):
            placed = await running.order_http.post(
                "/orders", json={"product_id": 10, "total_price": 1}
            )
            assert placed.status_code == 201
        for _ in range(400):  # every order settled: the stock moves no more
            listed = (await running.order_http.get("/orders/product/10")).json()
            if all(o["status"] != "pending" for o in listed):
                break
            await asyncio.sleep(0.01)
        yield running.product_http, running.order_http


@pytest.mark.parametrize("written", NOT_DIGITS)
async def test_an_id_not_written_in_digits_is_refused_and_acts_on_nothing(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient], written: str
) -> None:
    products, orders = apps
    before = [(await orders.get(f"/orders/{i}")).json()["status"] for i in (1, 10)]
    stock = (await products.get("/products/10")).json()
    answers = [
        await orders.get(f"/orders/{written}"),
        await orders.post(f"/orders/{written}/cancel"),
        await orders.get(f"/orders/product/{written}"),
        await products.get(f"/products/{written}"),
        await products.patch(f"/products/{written}", json={"qty": 1}),
        await products.post(
            f"/products/{written}/stock-adjustments", json={"delta": 5, "reason": "restock"}
        ),
        await products.delete(f"/products/{written}"),
    ]
    assert [a.status_code for a in answers] == [400] * len(answers), [a.text for a in answers]
    # Nothing acted on order 1 or 10 or product 1 or 10 (what 1_0, +10, 10.0 could be read as).
    assert [(await orders.get(f"/orders/{i}")).json()["status"] for i in (1, 10)] == before
    after = (await products.get("/products/10")).json()
    assert (after["qty"], after["name"], after["updated_at"]) == (
        stock["qty"],
        stock["name"],
        stock["updated_at"],
    )
    assert (await products.get("/products/1")).status_code == 200  # not deleted


@pytest.mark.parametrize(
    "query",
    ["limit=1_0", "limit=+5", "limit=5.0", "after=1.0", "after=-0", "product_id=1_0"],
)
async def test_a_query_count_not_written_in_digits_is_refused(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient], query: str
) -> None:
    products, orders = apps
    assert (await orders.get(f"/orders?{query}")).status_code == 400
    if query.startswith("limit"):
        assert (await products.get(f"/products?{query}")).status_code == 400
        assert (await orders.get(f"/orders/product/10?{query}")).status_code == 400


async def test_ids_and_counts_in_digits_still_work(
    apps: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    products, orders = apps
    assert (await orders.get("/orders/10")).status_code == 200
    assert (await products.get("/products/010")).json()["id"] == 10  # leading zeros: digits
    page = await orders.get("/orders?limit=3&after=2&product_id=10")
    assert [o["id"] for o in page.json()] == [3, 4, 5]

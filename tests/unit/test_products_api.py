"""The product routes in process, on the fakes: ETag, If-Match, stock adjustments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orderstack.products.api import product_router
from orderstack.products.domain import MAX_QTY, ReserveStock
from orderstack.products.service import ProductService
from tests.unit.fakes import FakeProductDatabase
from tests.unit.routes import open_access, route_client


@pytest.fixture
async def http(product_service: ProductService) -> AsyncIterator[httpx.AsyncClient]:
    async with route_client(
        product_router(open_access()), "nest", products=product_service
    ) as client:
        yield client


async def create(http: httpx.AsyncClient, qty: int = 5) -> dict[str, Any]:
    response = await http.post("/products", json={"name": "Phone", "price": 500, "qty": qty})
    assert response.status_code == 201
    assert response.headers["etag"] == '"1"'
    body: dict[str, Any] = response.json()
    return body


async def reserve(db: FakeProductDatabase, service: ProductService, *orders: int) -> None:
    async with db.unit_of_work() as uow:
        await service.reserve_stock(uow, [ReserveStock(o, 1) for o in orders])
        await uow.commit()


# -- ETag and If-Match -------------------------------------------------------------------


async def test_get_answers_the_version_as_a_strong_etag(
    http: httpx.AsyncClient, product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await create(http)
    assert (await http.get(f"/products/{product['id']}")).headers["etag"] == '"1"'

    await reserve(product_db, product_service, 100)

    assert (await http.get(f"/products/{product['id']}")).headers["etag"] == '"2"'


async def test_patch_with_the_current_etag_applies_and_answers_the_new_one(
    http: httpx.AsyncClient,
) -> None:
    product = await create(http)
    etag = (await http.get(f"/products/{product['id']}")).headers["etag"]

    response = await http.patch(
        f"/products/{product['id']}", json={"qty": 9}, headers={"If-Match": etag}
    )

    assert response.status_code == 200
    assert response.json()["qty"] == 9
    assert response.headers["etag"] == '"2"'


@pytest.mark.parametrize("if_match", ['"1"', '"0", "1"', "*", None])
async def test_patch_after_a_sale_with_a_stale_etag_is_412_and_changes_nothing(
    http: httpx.AsyncClient,
    product_service: ProductService,
    product_db: FakeProductDatabase,
    if_match: str | None,
) -> None:
    product = await create(http)
    await reserve(product_db, product_service, 100)  # version 2, qty 4
    headers = {} if if_match is None else {"If-Match": if_match}

    response = await http.patch(f"/products/{product['id']}", json={"qty": 50}, headers=headers)

    if if_match in ("*", None):  # no precondition: applies as before
        assert response.status_code == 200
        assert response.json()["qty"] == 50
        return
    assert response.status_code == 412
    body = response.json()
    assert body["statusCode"] == 412
    assert body["error"] == "Precondition Failed"
    assert body["code"] == "PRECONDITION_FAILED"
    assert "version 2" in body["message"]
    assert product_db.products.rows[product["id"]].qty == 4


@pytest.mark.parametrize("if_match", ['W/"1"', '"abc"', '"99999999999999999999999"'])
async def test_weak_or_foreign_etags_never_match(http: httpx.AsyncClient, if_match: str) -> None:
    product = await create(http)

    response = await http.patch(
        f"/products/{product['id']}", json={"name": "X"}, headers={"If-Match": if_match}
    )

    assert response.status_code == 412


@pytest.mark.parametrize("if_match", ["1", '"1', "garbage", '"1" "2"'])
async def test_malformed_if_match_is_400(http: httpx.AsyncClient, if_match: str) -> None:
    product = await create(http)

    response = await http.patch(
        f"/products/{product['id']}", json={"name": "X"}, headers={"If-Match": if_match}
    )

    assert response.status_code == 400
    assert response.json()["error"] == "Bad Request"


async def test_patch_of_an_unknown_product_with_if_match_is_404(http: httpx.AsyncClient) -> None:
    response = await http.patch("/products/42", json={"qty": 1}, headers={"If-Match": '"1"'})

    assert response.status_code == 404


# -- stock adjustments -------------------------------------------------------------------


async def test_stock_adjustment_answers_201_with_the_entry_the_product_and_its_etag(
    http: httpx.AsyncClient,
) -> None:
    product = await create(http, qty=5)

    response = await http.post(
        f"/products/{product['id']}/stock-adjustments",
        json={"delta": 3, "reason": "  restock  "},
    )

    assert response.status_code == 201
    assert response.headers["etag"] == '"2"'
    body = response.json()
    assert {k: body[k] for k in ("product_id", "delta", "reason", "qty_after")} == {
        "product_id": product["id"],
        "delta": 3,
        "reason": "restock",
        "qty_after": 8,
    }
    assert body["id"] >= 1 and body["created_at"] == "2025-09-20T10:30:00Z"
    assert body["product"]["qty"] == 8
    assert (await http.get(f"/products/{product['id']}")).json()["qty"] == 8


async def test_stock_adjustment_below_zero_is_409_with_the_current_qty(
    http: httpx.AsyncClient, product_db: FakeProductDatabase
) -> None:
    product = await create(http, qty=2)

    response = await http.post(
        f"/products/{product['id']}/stock-adjustments", json={"delta": -3, "reason": "loss"}
    )

    assert response.status_code == 409
    body = response.json()
    assert (body["statusCode"], body["error"], body["code"], body["qty"]) == (
        409,
        "Conflict",
        "INSUFFICIENT_STOCK",
        2,
    )
    assert product_db.products.rows[product["id"]].qty == 2
    assert len(product_db.products.adjustments) == 1  # the "created" entry only


async def test_stock_adjustment_above_the_largest_stock_is_409(http: httpx.AsyncClient) -> None:
    product = await create(http, qty=MAX_QTY)

    response = await http.post(
        f"/products/{product['id']}/stock-adjustments", json={"delta": 1, "reason": "restock"}
    )

    assert response.status_code == 409
    assert response.json()["code"] == "STOCK_LIMIT_EXCEEDED"


async def test_stock_adjustment_of_an_unknown_product_is_404(http: httpx.AsyncClient) -> None:
    response = await http.post("/products/42/stock-adjustments", json={"delta": 1, "reason": "x"})

    assert response.status_code == 404
    assert response.json()["message"] == "Product 42 not found"


@pytest.mark.parametrize(
    "body",
    [
        {"delta": 0, "reason": "nothing"},
        {"delta": 1},
        {"reason": "restock"},
        {"delta": 1, "reason": ""},
        {"delta": 1, "reason": "   "},
        {"delta": 1, "reason": "x" * 201},
        {"delta": 1.5, "reason": "restock"},
        {"delta": "1", "reason": "restock"},
        {"delta": True, "reason": "restock"},
        {"delta": MAX_QTY + 1, "reason": "restock"},
        {"delta": -MAX_QTY - 1, "reason": "restock"},
        {"delta": 1, "reason": "restock", "extra": 1},
    ],
)
async def test_invalid_stock_adjustment_is_400_and_changes_nothing(
    http: httpx.AsyncClient, product_db: FakeProductDatabase, body: dict[str, Any]
) -> None:
    product = await create(http)

    response = await http.post(f"/products/{product['id']}/stock-adjustments", json=body)

    assert response.status_code == 400
    assert response.json()["error"] == "Bad Request"
    assert product_db.products.rows[product["id"]].qty == 5


async def test_reason_of_200_characters_is_accepted(http: httpx.AsyncClient) -> None:
    product = await create(http)

    response = await http.post(
        f"/products/{product['id']}/stock-adjustments", json={"delta": -1, "reason": "r" * 200}
    )

    assert response.status_code == 201


# -- OpenAPI -----------------------------------------------------------------------------


async def test_openapi_shows_etag_if_match_and_the_new_route(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/openapi.json")).json()
    paths = schema["paths"]

    get = paths["/products/{product_id}"]["get"]
    assert "ETag" in get["responses"]["200"]["headers"]
    patch = paths["/products/{product_id}"]["patch"]
    assert any(p["name"] == "If-Match" and p["in"] == "header" for p in patch["parameters"])
    assert "ETag" in patch["responses"]["200"]["headers"]
    assert "412" in patch["responses"]
    adjust = paths["/products/{product_id}/stock-adjustments"]["post"]
    assert {"201", "400", "404", "409"} <= set(adjust["responses"])
    assert "ETag" in adjust["responses"]["201"]["headers"]

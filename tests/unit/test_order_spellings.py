"""`POST /orders` takes the seed's clients as they are: each field in snake_case (the SPEC,
the seed's README) or camelCase (the seed's Go service and its load test), never both, and
answers in snake_case. Routes run in process on the service with its fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from orderstack.orders.api import order_router
from orderstack.orders.domain import OrderStatus
from orderstack.orders.service import OrderService
from orderstack.web.errors import install_error_handlers
from tests.unit.fakes import FakeOrderDatabase
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


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"product_id": 1, "total_price": 1500}, id="snake_case"),
        pytest.param({"productId": 1, "totalPrice": 1500}, id="camelCase"),
        pytest.param({"productId": 1, "total_price": 1500}, id="camel id, snake price"),
        pytest.param({"product_id": 1, "totalPrice": 1500}, id="snake id, camel price"),
    ],
)
async def test_either_spelling_places_the_order_and_the_answer_is_snake_case(
    http: httpx.AsyncClient, order_db: FakeOrderDatabase, body: dict[str, Any]
) -> None:
    response = await http.post("/orders", json=body)

    assert response.status_code == 201, response.text
    order = response.json()
    assert set(order) == {
        "id",
        "product_id",
        "quantity",
        "total_price",
        "status",
        "created_at",
        "items",
    }
    assert (order["product_id"], order["total_price"], order["status"]) == (1, 1500, "pending")
    stored = order_db.orders.rows[order["id"]]
    assert (stored.product_id, stored.total_price, stored.status) == (1, 1500, OrderStatus.PENDING)


async def test_camel_case_unknown_product_is_refused_like_snake_case(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/orders", json={"productId": 999, "totalPrice": 1})

    assert response.status_code == 400
    assert response.json()["code"] == "PRODUCT_NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        pytest.param(
            {"product_id": 1, "productId": 1, "total_price": 5},
            ["product_id and productId"],
            id="product id twice",
        ),
        pytest.param(
            {"productId": 1, "total_price": 5, "totalPrice": 6},
            ["total_price and totalPrice"],
            id="price twice",
        ),
        pytest.param(
            {"product_id": 1, "productId": 2, "total_price": 5, "totalPrice": 5},
            ["product_id and productId", "total_price and totalPrice"],
            id="both twice",
        ),
    ],
)
async def test_both_spellings_of_one_field_is_a_400_naming_them(
    http: httpx.AsyncClient, order_db: FakeOrderDatabase, body: dict[str, Any], named: list[str]
) -> None:
    response = await http.post("/orders", json=body)

    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "VALIDATION_ERROR"
    for pair in named:
        assert f"{pair} are one field; send only one of them" in error["error"]
    assert order_db.orders.rows == {}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"productId": 1, "totalPrice": 5, "coupon": "X"},
            "coupon: Extra inputs are not permitted",
            id="unknown field beside camelCase",
        ),
        pytest.param(
            {"product_id": 1, "total_price": 5, "ProductID": 1},
            "ProductID: Extra inputs are not permitted",
            id="a third spelling",
        ),
        pytest.param({"totalPrice": 1}, "send items, or product_id", id="product missing"),
        pytest.param(
            {"productId": 1, "items": [{"productId": 2}]},
            "send items, or product_id and quantity, not both",
            id="items beside a product",
        ),
        pytest.param(
            {"items": [{"productId": 1, "product_id": 1}]},
            "product_id and productId are one field",
            id="a line's product twice",
        ),
        pytest.param(
            {"productId": "1", "totalPrice": 5},
            "productId: Input should be a valid integer",
            id="id as string, named as sent",
        ),
        pytest.param(
            {"productId": 1, "totalPrice": -1},
            "totalPrice: Input should be greater than or equal to 0",
            id="negative price, named as sent",
        ),
    ],
)
async def test_camel_case_body_is_validated_like_snake_case(
    http: httpx.AsyncClient, order_db: FakeOrderDatabase, body: dict[str, Any], expected: str
) -> None:
    response = await http.post("/orders", json=body)

    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert order_db.orders.rows == {}


async def test_openapi_offers_both_spellings_and_one_of_each(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    schema = document["components"]["schemas"]["OrderCreate"]

    assert {"product_id", "productId", "total_price", "totalPrice"} <= set(schema["properties"])
    assert schema["properties"]["productId"]["type"] == "integer"
    assert schema["additionalProperties"] is False
    assert "required" not in schema  # the lines are named one way, under one of its names
    assert schema["allOf"] == [
        {"not": {"required": ["product_id", "productId"]}},
        {"not": {"required": ["total_price", "totalPrice"]}},
        {
            "oneOf": [
                {"required": ["product_id"]},
                {"required": ["productId"]},
                {"required": ["items"]},
            ]
        },
        {"not": {"required": ["items", "quantity"]}},
    ]
    assert {"productId": 1, "totalPrice": 1500} in schema["examples"]
    assert {"product_id": 1, "total_price": 1500} in schema["examples"]

"""The seed's example workflows, written once and run against both deployments."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

TERMINAL = {"confirmed", "failed"}


async def create_product(
    client: httpx.AsyncClient, product_url: str, name: str, price: float, qty: int
) -> dict[str, Any]:
    response = await client.post(
        f"{product_url}/products", json={"name": name, "price": price, "qty": qty}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_terminal(
    client: httpx.AsyncClient, order_url: str, order_id: int, timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"{order_url}/orders/{order_id}")).json()
        if body["status"] in TERMINAL or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.05)


async def complete_order_flow(client: httpx.AsyncClient, product_url: str, order_url: str) -> None:
    """Seed: create a product, order it, see the order confirmed and the stock decremented."""
    product = await create_product(client, product_url, "Gaming Laptop", 2999.99, 5)
    assert product["qty"] == 5 and product["price"] == 2999.99
    response = await client.post(
        f"{order_url}/orders", json={"product_id": product["id"], "total_price": 2999.99}
    )
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending" and order["total_price"] == 2999.99
    assert order["created_at"].endswith("Z")
    settled = await wait_terminal(client, order_url, order["id"])
    assert settled["status"] == "confirmed"
    # Right after the confirmation the product shows the new stock, cache or not.
    after = (await client.get(f"{product_url}/products/{product['id']}")).json()
    assert after["qty"] == 4
    listed = (await client.get(f"{order_url}/orders/product/{product['id']}")).json()
    assert [o["id"] for o in listed] == [order["id"]]


async def error_handling_flow(client: httpx.AsyncClient, product_url: str, order_url: str) -> None:
    """Seed: unknown product is refused; an out-of-stock product's order ends failed."""
    response = await client.post(
        f"{order_url}/orders", json={"product_id": 999_999, "total_price": 1000}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "PRODUCT_NOT_FOUND"
    empty = await create_product(client, product_url, "Out of Stock Item", 99.99, 0)
    response = await client.post(
        f"{order_url}/orders", json={"product_id": empty["id"], "total_price": 99.99}
    )
    assert response.status_code == 201
    settled = await wait_terminal(client, order_url, response.json()["id"])
    assert settled["status"] == "failed"
    after = (await client.get(f"{product_url}/products/{empty['id']}")).json()
    assert after["qty"] == 0
    missing = await client.get(f"{order_url}/orders/987654321")
    assert missing.status_code == 404 and missing.json()["error"] == "order not found"
    gone = await client.get(f"{product_url}/products/987654321")
    assert gone.status_code == 404
    assert gone.json() == {
        "statusCode": 404,
        "message": "Product 987654321 not found",
        "error": "Not Found",
    }


async def health_is_green(client: httpx.AsyncClient, product_url: str, order_url: str) -> None:
    order_health = await client.get(f"{order_url}/health")
    assert order_health.status_code == 200, order_health.text
    assert order_health.json()["services"] == {
        "database": "up",
        "redis": "up",
        "product_service": "up",
        "rabbitmq": "up",
    }
    product_health = await client.get(f"{product_url}/health")
    assert product_health.status_code == 200, product_health.text
    assert set(product_health.json()["services"]) == {"database", "redis", "rabbitmq"}

"""Quantities and cancellations, written once and run against both deployments (the real
stack in test_quantities_and_cancellation.py, the embedded default in
test_quantities_and_cancellation_embedded.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .workflows import create_product, wait_terminal

Quiet = Callable[[int], Awaitable[None]]  # given a product id


async def place(
    client: httpx.AsyncClient, order_url: str, product_id: int, quantity: int
) -> dict[str, Any]:
    # No total: the catalog prices the order (a client total must be the catalog's).
    response = await client.post(
        f"{order_url}/orders", json={"product_id": product_id, "quantity": quantity}
    )
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["quantity"] == quantity and order["status"] == "pending"
    return order


async def stock(client: httpx.AsyncClient, product_url: str, product_id: int) -> int:
    qty: int = (await client.get(f"{product_url}/products/{product_id}")).json()["qty"]
    return qty


async def wait_stock(
    client: httpx.AsyncClient, product_url: str, product_id: int, qty: int, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while (now := await stock(client, product_url, product_id)) != qty:
        assert time.monotonic() < deadline, f"stock {now}, expected {qty}"
        await asyncio.sleep(0.05)


async def wait_status(
    client: httpx.AsyncClient, order_url: str, order_id: int, status: str, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while (now := (await client.get(f"{order_url}/orders/{order_id}")).json()["status"]) != status:
        assert time.monotonic() < deadline, f"order {order_id} is {now}, expected {status}"
        await asyncio.sleep(0.05)


async def quantity_flow(client: httpx.AsyncClient, product_url: str, order_url: str) -> None:
    """Orders of several units settle, each taking all its units or none; the stock drops by
    the quantities confirmed. Placed one after the other, so the oldest goes first."""
    product = await create_product(client, product_url, "Chairs", 40, 10)
    expected = [(4, "confirmed", 6), (4, "confirmed", 2), (3, "failed", 2), (2, "confirmed", 0)]
    for quantity, status, left in expected:
        order = await place(client, order_url, product["id"], quantity)
        settled = await wait_terminal(client, order_url, order["id"])
        assert (settled["status"], settled["quantity"]) == (status, quantity)
        assert await stock(client, product_url, product["id"]) == left
    default = await client.post(
        f"{order_url}/orders", json={"product_id": product["id"], "total_price": 1}
    )
    assert default.status_code == 201 and default.json()["quantity"] == 1
    too_many = await client.post(
        f"{order_url}/orders",
        json={"product_id": product["id"], "total_price": 1, "quantity": 1001},
    )
    assert too_many.status_code == 400 and "quantity" in too_many.json()["error"]


async def cancel_confirmed_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str
) -> None:
    """A confirmed order's cancellation gives its units back once, however often it is
    asked; the units can be ordered again."""
    product = await create_product(client, product_url, "Tables", 90, 5)
    order = await place(client, order_url, product["id"], 3)
    assert (await wait_terminal(client, order_url, order["id"]))["status"] == "confirmed"
    assert await stock(client, product_url, product["id"]) == 2

    answers = [await client.post(f"{order_url}/orders/{order['id']}/cancel") for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert {a.json()["status"] for a in answers} == {"cancelled"}
    await wait_stock(client, product_url, product["id"], 5)
    again = await place(client, order_url, product["id"], 5)
    assert (await wait_terminal(client, order_url, again["id"]))["status"] == "confirmed"
    assert await stock(client, product_url, product["id"]) == 0  # 5, not 8: restocked once
    assert (await client.get(f"{order_url}/orders/{order['id']}")).json()["status"] == "cancelled"


async def cancel_pending_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, quiet: Quiet
) -> None:
    """Orders cancelled right after they were placed, before or after the product service
    answered: each stays cancelled whatever answer comes, and the stock comes back whole.
    ``quiet(product_id)`` waits until every event sent so far was handled."""
    product = await create_product(client, product_url, "Lamps", 20, 6)
    orders = [await place(client, order_url, product["id"], 2) for _ in range(3)]

    cancelled = [await client.post(f"{order_url}/orders/{o['id']}/cancel") for o in orders]

    assert [c.json()["status"] for c in cancelled] == ["cancelled"] * 3
    await quiet(product["id"])
    assert await stock(client, product_url, product["id"]) == 6
    last = await place(client, order_url, product["id"], 6)
    assert (await wait_terminal(client, order_url, last["id"]))["status"] == "confirmed"
    for order in orders:
        body = (await client.get(f"{order_url}/orders/{order['id']}")).json()
        assert body["status"] == "cancelled"


async def failed_order_cannot_be_cancelled(
    client: httpx.AsyncClient, product_url: str, order_url: str
) -> None:
    product = await create_product(client, product_url, "Scarce", 20, 1)
    order = await place(client, order_url, product["id"], 2)
    assert (await wait_terminal(client, order_url, order["id"]))["status"] == "failed"

    refused = await client.post(f"{order_url}/orders/{order['id']}/cancel")

    assert refused.status_code == 409 and refused.json()["code"] == "ORDER_NOT_CANCELLABLE"
    missing = await client.post(f"{order_url}/orders/999999999/cancel")
    assert missing.status_code == 404


async def cancel_at_the_stock_limit_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str
) -> None:
    """Units a confirmed order holds count toward the largest stock: a restock or a PATCH
    that would leave no room for them to come back is refused (409), so the order's cancel
    always gives its units back."""
    limit = 2_147_483_647
    product = await create_product(client, product_url, "Bulk", 1, limit)
    order = await place(client, order_url, product["id"], 5)
    assert (await wait_terminal(client, order_url, order["id"]))["status"] == "confirmed"
    assert await stock(client, product_url, product["id"]) == limit - 5

    restock = await client.post(
        f"{product_url}/products/{product['id']}/stock-adjustments",
        json={"delta": 5, "reason": "restock"},
    )
    patch = await client.patch(f"{product_url}/products/{product['id']}", json={"qty": limit})
    assert [restock.status_code, patch.status_code] == [409, 409], (restock.text, patch.text)
    assert {restock.json()["code"], patch.json()["code"]} == {"STOCK_LIMIT_EXCEEDED"}
    assert await stock(client, product_url, product["id"]) == limit - 5

    cancelled = await client.post(f"{order_url}/orders/{order['id']}/cancel")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    await wait_stock(client, product_url, product["id"], limit)

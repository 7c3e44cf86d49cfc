"""Holds (issue 23, item 1), written once and run against both deployments (the real stack
in test_holds.py, the embedded default in test_holds_embedded.py): hold -> reserved ->
confirm; hold -> expired -> units back; a confirm too late; a reserved order cancelled.
(A confirm of a pending order, 409 ORDER_NOT_RESERVED, is tested in process: here its
order could be reserved by the time the confirm comes.)"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from .cancel_workflows import stock, wait_status, wait_stock
from .workflows import create_product

HOLD = 5  # seconds: the shortest hold there is


async def place_held(
    client: httpx.AsyncClient, order_url: str, product_id: int, quantity: int, hold: int | None
) -> dict[str, Any]:
    """A held order: ``hold`` in its body, or None to take ORDER_HOLD_SECONDS."""
    body: dict[str, Any] = {"product_id": product_id, "quantity": quantity}
    if hold is not None:
        body["hold_seconds"] = hold
    response = await client.post(f"{order_url}/orders", json=body)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] == "pending" and order["hold_seconds"] == (hold or HOLD)
    return order


async def wait_status_in(
    client: httpx.AsyncClient, order_url: str, order_id: int, statuses: set[str]
) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while (order := (await client.get(f"{order_url}/orders/{order_id}")).json())[
        "status"
    ] not in statuses:
        assert time.monotonic() < deadline, f"order {order_id}: {order}, expected {statuses}"
        await asyncio.sleep(0.05)
    found: dict[str, Any] = order
    return found


async def hold_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, *, hold: int | None = HOLD
) -> tuple[int, list[int]]:
    """Four held orders of one product at once: one confirmed (twice: the same answer), one
    left to expire (``hold``: its units back once, a confirm after it 409 ORDER_EXPIRED),
    one cancelled while reserved, and one still reserved at the end, its units held. The
    orders a step acts on have holds of a minute, so that a loaded machine does not expire
    them first. Returns the product and the orders."""
    product = await create_product(client, product_url, "Held lamp", 30, 20)
    pid = product["id"]
    expire = await place_held(client, order_url, pid, 3, hold)
    confirm, cancel, kept = [
        await place_held(client, order_url, pid, quantity, long)
        for quantity, long in ((2, 60), (4, 60), (1, 3600))
    ]
    for order in (confirm, cancel, kept):
        await wait_status(client, order_url, order["id"], "reserved")
    # Reserved, then expired HOLD seconds after its units were taken (seen reserved unless
    # the machine is so loaded that a poll comes after its end).
    seen = await wait_status_in(client, order_url, expire["id"], {"reserved", "expired"})
    assert seen["hold_seconds"] == HOLD and "expires_at" in seen, seen
    ends = datetime.fromisoformat(seen["expires_at"].replace("Z", "+00:00"))
    assert (ends - datetime.now(UTC)).total_seconds() <= HOLD, seen
    # Every order's units taken (the product service takes them before it answers), the
    # expired one's maybe back already.
    assert await stock(client, product_url, pid) in {20 - 10, 20 - 10 + 3}

    first = await client.post(
        f"{order_url}/orders/{confirm['id']}/confirm", json={"payment_reference": "pay-e2e"}
    )
    again = await client.post(f"{order_url}/orders/{confirm['id']}/confirm")
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json() == again.json()
    assert first.json()["status"] == "confirmed"
    assert first.json()["payment_reference"] == "pay-e2e"
    cancelled = await client.post(f"{order_url}/orders/{cancel['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled", cancelled.text

    # The sweep expires it within a second or two of its end (ORDER_EXPIRY_INTERVAL_SECONDS).
    await wait_status(client, order_url, expire["id"], "expired", timeout=HOLD + 10)
    expired_at = time.monotonic()
    late = await client.post(f"{order_url}/orders/{expire['id']}/confirm")
    assert (late.status_code, late.json()["code"]) == (409, "ORDER_EXPIRED"), late.text
    # Back: the expired order's 3 and the cancelled one's 4; confirmed 2 and kept 1 held.
    await wait_stock(client, product_url, pid, 20 - 3)
    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - expired_at)))
    assert await stock(client, product_url, pid) == 17  # once, not again a moment later
    final = {
        o["id"]: (await client.get(f"{order_url}/orders/{o['id']}")).json()["status"]
        for o in (confirm, expire, cancel, kept)
    }
    assert list(final.values()) == ["confirmed", "expired", "cancelled", "reserved"], final
    listed = (await client.get(f"{order_url}/orders", params={"status": "reserved"})).json()
    assert kept["id"] in [o["id"] for o in listed]
    return pid, [confirm["id"], expire["id"], cancel["id"], kept["id"]]

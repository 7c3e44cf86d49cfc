"""The seed's example workflows, written once and run against both deployments."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urljoin

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from harness.invariants import (
    harness_engine,
    ready_depths,
    settlement,
    stock_violations,
    unconsumed_events,
)
from harness.stack import Stack

TERMINAL = {"confirmed", "failed"}

# With Stack(seed_variables=True): a DATABASE_URL or REDIS_HOST in the caller's environment
# would win over the seed's variables; an empty value counts as unset.
ONLY_SEED_VARIABLES = {"DATABASE_URL": "", "REDIS_HOST": ""}


async def create_product(
    client: httpx.AsyncClient, product_url: str, name: str, price: float, qty: int
) -> dict[str, Any]:
    response = await client.post(
        f"{product_url}/products", json={"name": name, "price": price, "qty": qty}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def post_order_retrying(
    client: httpx.AsyncClient,
    order_url: str,
    body: dict[str, object],
    *,
    key: str | None = None,
    codes: frozenset[str] | None = None,
    seconds: float = 20,
) -> httpx.Response:
    """POST /orders as a client that honours a 503's Retry-After, for at most ``seconds``:
    every 503, or only those whose ``code`` is in ``codes``. With ``key``, every attempt
    carries it as the Idempotency-Key (an answer lost still makes one order). The last
    answer is returned."""
    headers = {"Idempotency-Key": key} if key is not None else None
    deadline = time.monotonic() + seconds
    while True:
        response = await client.post(f"{order_url}/orders", json=body, headers=headers)
        again = response.status_code == 503 and (
            codes is None or response.json().get("code") in codes
        )
        if not again or time.monotonic() > deadline:
            return response
        await asyncio.sleep(float(response.headers.get("retry-after", "0.2")))


async def wait_terminal(
    client: httpx.AsyncClient, order_url: str, order_id: int, timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = (await client.get(f"{order_url}/orders/{order_id}")).json()
        if body["status"] in TERMINAL or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.05)


def leaks(text: str, passwords: list[str]) -> list[str]:
    """Each password, as it is or percent-encoded, that appears in ``text``."""
    forms = {form for p in passwords for form in (p, quote(p, safe=""), quote(p))}
    return sorted(form for form in forms if form in text)


async def wait_quiet(
    stack: Stack,
    condition: Callable[[AsyncConnection], Awaitable[bool]] | None = None,
    timeout: float = 20.0,
) -> None:
    """Poll, bounded, until ``condition`` holds on the sandbox's database, then no event
    waits in an outbox, every event sent for a queue is in its consumer's inbox (consumed,
    not only published: the inbox record commits with the event's effects), and no work
    queue holds a ready message (one a test published itself, say). Checked in that order,
    each observation comes after the one before, so nothing is in flight between. Instead
    of a fixed pause before asserting that something did (or did not) happen.

    All of it exact and cheap: the databases, and passive declares for the ready counts
    (rabbitmqctl's counts of a quorum queue lag by a statistics interval)."""
    deadline = time.monotonic() + timeout
    engine = harness_engine(stack.sandbox.database_url)
    try:
        while True:
            async with engine.connect() as conn:
                holds = condition is None or await condition(conn)
            unsent = (await settlement(stack.sandbox.database_url, None)).unsent_events
            unconsumed = await unconsumed_events(stack.sandbox.database_url)
            busy: dict[str, int] | str = "not looked at"
            if holds and unsent == 0 and unconsumed == 0:
                ready = await ready_depths(stack.sandbox.amqp_url)
                busy = {q: n for q, n in ready.items() if n and not q.endswith(".dlq")}
                if not busy:
                    return
            assert time.monotonic() < deadline, (
                f"not quiet after {timeout}s: condition {holds}, {unsent} unsent, "
                f"{unconsumed} sent but not consumed, ready in queues {busy}"
            )
            await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


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
    await inexact_input_is_refused(client, product_url, order_url, empty["id"])


async def inexact_input_is_refused(
    client: httpx.AsyncClient, product_url: str, order_url: str, product_id: int
) -> None:
    """Money is read as written (sixteen decimals are not rounded to a cent) and ids in a
    path are digits only (``1_0`` is not 10): each is a 400 that places or touches nothing."""
    json_body = {"content-type": "application/json"}
    before = (await client.get(f"{order_url}/orders/product/{product_id}")).json()
    for total in (b"1.0000000000000001", b"99.989999999999999999"):
        body = b'{"product_id": %d, "total_price": %s}' % (product_id, total)
        refused = await client.post(f"{order_url}/orders", content=body, headers=json_body)
        assert refused.status_code == 400, refused.text
    price = b'{"name": "Inexact", "price": 0.009999999999999999999, "qty": 1}'
    refused = await client.post(f"{product_url}/products", content=price, headers=json_body)
    assert refused.status_code == 400, refused.text
    assert (await client.get(f"{order_url}/orders/product/{product_id}")).json() == before
    spaced = "_".join(str(product_id))
    if "_" in spaced:  # an id of two digits or more
        assert (await client.get(f"{product_url}/products/{spaced}")).status_code == 400
    assert (await client.get(f"{product_url}/products/+{product_id}")).status_code == 400
    assert (await client.get(f"{order_url}/orders/1.0")).status_code == 400


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


async def concurrent_orders_never_oversell(
    client: httpx.AsyncClient,
    product_url: str,
    order_url: str,
    database_url: str,
    stock: int,
    demand: int,
) -> None:
    """``demand`` orders at once on one product with ``stock`` units: exactly ``stock``
    confirmed, the rest failed, the stock at 0, and the database's invariants hold."""
    product = await create_product(client, product_url, "Hot item", 10, stock)

    async def order() -> int:
        # A replica that sheds new orders while earlier ones settle late (503 OVERLOADED,
        # on a busy machine) is asked again after its Retry-After, as a client would.
        response = await post_order_retrying(
            client,
            order_url,
            {"product_id": product["id"], "total_price": 10},
            codes=frozenset({"OVERLOADED"}),
            seconds=30,
        )
        assert response.status_code == 201, response.text
        order_id: int = response.json()["id"]
        return order_id

    order_ids = await asyncio.gather(*(order() for _ in range(demand)))
    assert len(set(order_ids)) == demand  # every order got its own id
    settled = await asyncio.gather(
        *(wait_terminal(client, order_url, i, timeout=60) for i in order_ids)
    )
    statuses = [o["status"] for o in settled]
    assert statuses.count("confirmed") == stock
    assert statuses.count("failed") == demand - stock
    after = (await client.get(f"{product_url}/products/{product['id']}")).json()
    assert after["qty"] == 0
    assert await stock_violations(database_url, {product["id"]: stock}, order_ids) == []


async def idempotency_flow(client: httpx.AsyncClient, product_url: str, order_url: str) -> None:
    """Exact keys (``abc`` and ``ABC`` are two orders), a replay answers the first order, a
    key reused with another body is 422 and creates nothing; the same key sent many times
    at once, among other orders written in the same group commits, makes one order."""
    product = await create_product(client, product_url, "Keyed", 10, 100)
    body = {"product_id": product["id"], "total_price": 10}

    async def post(key: str, json: dict[str, object] = body) -> httpx.Response:
        return await client.post(f"{order_url}/orders", json=json, headers={"Idempotency-Key": key})

    first = await post("abc")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    replay = await post("abc", {**body, "total_price": 10.00})
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    other_case = await post("ABC")
    assert other_case.status_code == 201 and "Idempotent-Replayed" not in other_case.headers
    assert other_case.json()["id"] != first.json()["id"]
    reused = await post("abc", {**body, "total_price": 11})
    assert reused.status_code == 422 and reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"

    same = [post("same-key") for _ in range(15)]
    distinct = [post(f"key-{i}") for i in range(15)]
    answers = await asyncio.gather(*same, *distinct)
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    same_ids = {a.json()["id"] for a in answers[:15]}
    distinct_ids = {a.json()["id"] for a in answers[15:]}
    assert len(same_ids) == 1 and len(distinct_ids) == 15
    assert not same_ids & distinct_ids

    created = [first.json()["id"], other_case.json()["id"], *same_ids, *distinct_ids]
    for order_id in created:
        assert (await wait_terminal(client, order_url, order_id))["status"] == "confirmed"
    listed = (await client.get(f"{order_url}/orders/product/{product['id']}")).json()
    assert sorted(o["id"] for o in listed) == sorted(created)
    after = (await client.get(f"{product_url}/products/{product['id']}")).json()
    assert after["qty"] == 100 - len(created)


async def follow_links(client: httpx.AsyncClient, url: str) -> tuple[list[dict[str, Any]], int]:
    """Every order from ``url`` on, following ``Link: <…>; rel="next"`` to the last page;
    and the number of pages."""
    seen: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert isinstance(page, list)
        seen += page
        pages += 1
        assert pages <= 1000, "the links do not end"
        link = response.links.get("next")
        # Relative (the services never build it from the Host header): read against the
        # page's own URL, as RFC 8288 says.
        next_url = urljoin(str(response.url), link["url"]) if link else None
        assert next_url is None or page, "a page with a next link is never empty"
    return seen, pages


async def order_queries_flow(client: httpx.AsyncClient, product_url: str, order_url: str) -> None:
    """More orders on a product than a page holds: following the Link headers of
    ``GET /orders/product/{id}`` and of ``GET /orders`` (filtered by product and status)
    returns each order once, oldest first; bad filters are 400 with the error body."""
    product = await create_product(client, product_url, "Listed", 3, 7)
    placed = []
    for _ in range(12):  # one at a time: ids in the order they were placed
        response = await client.post(
            f"{order_url}/orders", json={"product_id": product["id"], "total_price": 3}
        )
        assert response.status_code == 201, response.text
        placed.append(response.json()["id"])
    settled = {
        o["id"]: o["status"] for o in [await wait_terminal(client, order_url, i) for i in placed]
    }
    confirmed = [i for i in placed if settled[i] == "confirmed"]
    failed = [i for i in placed if settled[i] == "failed"]
    assert len(confirmed) == 7 and len(failed) == 5

    first = await client.get(f"{order_url}/orders/product/{product['id']}?limit=5")
    assert [o["id"] for o in first.json()] == placed[:5]
    assert first.links["next"]["url"].startswith(f"/orders/product/{product['id']}?")
    listed, pages = await follow_links(
        client, f"{order_url}/orders/product/{product['id']}?limit=5"
    )
    assert [o["id"] for o in listed] == placed and pages == 3
    whole = await client.get(f"{order_url}/orders/product/{product['id']}")
    assert len(whole.json()) == 12 and "link" not in whole.headers

    by_product, _ = await follow_links(
        client, f"{order_url}/orders?product_id={product['id']}&limit=4"
    )
    assert [o["id"] for o in by_product] == placed
    for status, expected in (("confirmed", confirmed), ("failed", failed), ("pending", [])):
        url = f"{order_url}/orders?status={status}&product_id={product['id']}&limit=2"
        found, _ = await follow_links(client, url)
        assert [(o["id"], o["status"]) for o in found] == [(i, status) for i in expected]
    recent, _ = await follow_links(client, f"{order_url}/orders?after={placed[0] - 1}&limit=1000")
    assert set(placed) <= {o["id"] for o in recent}

    for query in ("status=shipped", "limit=0", "limit=1001", "after=-1", "product_id=x"):
        bad = await client.get(f"{order_url}/orders?{query}")
        assert bad.status_code == 400, (query, bad.text)
        assert bad.json()["code"] == "VALIDATION_ERROR" and set(bad.json()) == {
            "error",
            "code",
            "timestamp",
        }

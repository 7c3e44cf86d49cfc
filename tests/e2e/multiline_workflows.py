"""Orders of several lines, written once and run against the real stack
(test_multiline_orders.py, on MariaDB and PostgreSQL) and the embedded default
(test_multiline_orders_embedded.py): all lines or none across products, prices from the
catalog, the strict price check, cancels giving every line back once, queries by product.

Each flow takes the client, both services' URLs, the database URL (to check the ledger of
reservation lines) and ``quiet``, which waits until no event is in flight."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import sqlalchemy as sa

from harness.invariants import harness_engine
from orderstack.products.repository import (
    products,
    reservation_lines,
    stock_adjustments,
    stock_reservations,
)

from .workflows import create_product, follow_links, wait_terminal

Quiet = Callable[[], Awaitable[None]]
UNAVAILABLE = "product_not_found_or_unavailable"


async def place(
    client: httpx.AsyncClient,
    order_url: str,
    lines: list[tuple[int, int]],
    total: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"items": [{"product_id": p, "quantity": q} for p, q in lines]}
    if total is not None:
        body["total_price"] = total
    response = await client.post(f"{order_url}/orders", json=body)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] == "pending" and "product_id" not in order, order
    assert [(i["product_id"], i["quantity"]) for i in order["items"]] == lines
    return order


async def settled(client: httpx.AsyncClient, order_url: str, order_id: int) -> dict[str, Any]:
    body = await wait_terminal(client, order_url, order_id)
    assert body["status"] in ("confirmed", "failed"), body
    return body


async def stocks(client: httpx.AsyncClient, product_url: str, ids: list[int]) -> list[int]:
    answers = await asyncio.gather(*(client.get(f"{product_url}/products/{i}") for i in ids))
    return [a.json()["qty"] for a in answers]


async def lines_ledger_violations(database_url: str, product_ids: list[int]) -> list[str]:
    """Per product: qty >= 0, and the units the lines of confirmed reservations hold = the
    sum of its stock adjustments (its opening included) - its qty."""
    held = (
        sa.select(sa.func.coalesce(sa.func.sum(reservation_lines.c.quantity), 0))
        .select_from(
            reservation_lines.join(
                stock_reservations, stock_reservations.c.order_id == reservation_lines.c.order_id
            )
        )
        .where(
            reservation_lines.c.product_id == products.c.id,
            stock_reservations.c.outcome == "confirmed",
        )
        .scalar_subquery()
    )
    adjusted = (
        sa.select(sa.func.coalesce(sa.func.sum(stock_adjustments.c.delta), 0))
        .where(stock_adjustments.c.product_id == products.c.id)
        .scalar_subquery()
    )
    engine = harness_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        products.c.id, products.c.qty, held.label("held"), adjusted.label("adj")
                    )
                    .where(products.c.id.in_(product_ids))
                    .order_by(products.c.id)
                )
            ).all()
    finally:
        await engine.dispose()
    found = [f"products {sorted(set(product_ids) - {r.id for r in rows})} missing"]
    violations = found if len(rows) != len(set(product_ids)) else []
    for row in rows:
        if row.qty < 0:
            violations.append(f"product {row.id}: qty {row.qty}")
        if int(row.held) != int(row.adj) - row.qty:
            violations.append(
                f"product {row.id}: lines hold {row.held}, ledger {row.adj} - qty {row.qty}"
            )
    return violations


def _money(lines: list[tuple[int, int]], prices: dict[int, str]) -> float:
    return float(sum((Decimal(prices[p]) * q for p, q in lines), Decimal(0)))


async def priced_and_confirmed_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """A multi-line order with the catalog total confirms: every line priced from the
    catalog (a product twice: both lines at its price), the total the catalog's, the stock
    of each product down by its lines summed."""
    a = await create_product(client, product_url, "Lines A", 12.5, 10)
    b = await create_product(client, product_url, "Lines B", 3.99, 5)
    prices = {a["id"]: "12.5", b["id"]: "3.99"}
    lines = [(a["id"], 2), (b["id"], 3), (a["id"], 1)]
    order = await place(client, order_url, lines, _money(lines, prices))

    body = await settled(client, order_url, order["id"])
    assert body["status"] == "confirmed", body
    assert body["total_price"] == 49.47
    assert [
        (i["product_id"], i["quantity"], i["unit_price"], i["line_total"]) for i in body["items"]
    ] == [
        (a["id"], 2, 12.5, 25),
        (b["id"], 3, 3.99, 11.97),
        (a["id"], 1, 12.5, 12.5),
    ]
    assert "failure" not in body
    assert await stocks(client, product_url, [a["id"], b["id"]]) == [7, 2]
    await quiet()
    assert await lines_ledger_violations(database_url, [a["id"], b["id"]]) == []


async def unpriced_order_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """Without a total the order is unpriced until confirmed, then priced by the catalog."""
    a = await create_product(client, product_url, "Unpriced A", 0.1, 10)
    b = await create_product(client, product_url, "Unpriced B", 0.2, 10)
    order = await place(client, order_url, [(b["id"], 3), (a["id"], 1)])
    assert order["total_price"] is None
    assert all(i["unit_price"] is None and i["line_total"] is None for i in order["items"])

    body = await settled(client, order_url, order["id"])
    assert body["status"] == "confirmed", body
    assert body["total_price"] == 0.7  # exact: 3 x 0.20 + 0.10
    assert [(i["unit_price"], i["line_total"]) for i in body["items"]] == [(0.2, 0.6), (0.1, 0.1)]
    assert await stocks(client, product_url, [a["id"], b["id"]]) == [9, 7]
    await quiet()
    assert await lines_ledger_violations(database_url, [a["id"], b["id"]]) == []


async def short_line_fails_all_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """One line short (a product on two lines counts summed) fails the whole order: no
    product's stock moves, and the failure names each short line with what is left."""
    a = await create_product(client, product_url, "Short A", 2, 10)
    b = await create_product(client, product_url, "Short B", 5, 3)
    c = await create_product(client, product_url, "Short C", 1, 4)
    ids = [a["id"], b["id"], c["id"]]
    lines = [(a["id"], 2), (b["id"], 2), (c["id"], 1), (b["id"], 2)]
    order = await place(client, order_url, lines, 2 * 2 + 5 * 4 + 1)

    body = await settled(client, order_url, order["id"])
    assert body["status"] == "failed", body
    assert body["failure"] == {
        "reason": UNAVAILABLE,
        "lines": [{"product_id": b["id"], "requested": 4, "available": 3}],
        "catalog_total": 25,
    }
    assert all(i["unit_price"] is None for i in body["items"])
    assert await stocks(client, product_url, ids) == [10, 3, 4]

    # Two short lines, the order's total unsent: both named.
    two = await place(client, order_url, [(c["id"], 5), (a["id"], 11)])
    body = await settled(client, order_url, two["id"])
    assert body["status"] == "failed" and body["total_price"] is None, body
    assert sorted(
        (s["product_id"], s["requested"], s["available"]) for s in body["failure"]["lines"]
    ) == sorted([(c["id"], 5, 4), (a["id"], 11, 10)])
    assert await stocks(client, product_url, ids) == [10, 3, 4]
    # What is left still goes to an order that fits.
    fits = await place(client, order_url, [(b["id"], 3), (c["id"], 4)])
    assert (await settled(client, order_url, fits["id"]))["status"] == "confirmed"
    assert await stocks(client, product_url, ids) == [10, 0, 0]
    await quiet()
    assert await lines_ledger_violations(database_url, ids) == []


async def wrong_total_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """A total that is not the catalog's fails the order with price_changed and the
    catalog total, nothing taken; ordered again at that total, it confirms."""
    a = await create_product(client, product_url, "Total A", 19.99, 5)
    b = await create_product(client, product_url, "Total B", 0.01, 5)
    lines = [(a["id"], 2), (b["id"], 3)]
    for wrong in (40.02, 39.99, 0):
        order = await place(client, order_url, lines, wrong)
        body = await settled(client, order_url, order["id"])
        assert body["status"] == "failed", body
        assert body["total_price"] == wrong  # the client's, as sent
        assert body["failure"] == {"reason": "price_changed", "lines": [], "catalog_total": 40.01}
        assert await stocks(client, product_url, [a["id"], b["id"]]) == [5, 5]
    again = await place(client, order_url, lines, body["failure"]["catalog_total"])
    assert (await settled(client, order_url, again["id"]))["status"] == "confirmed"
    assert await stocks(client, product_url, [a["id"], b["id"]]) == [3, 2]
    await quiet()
    assert await lines_ledger_violations(database_url, [a["id"], b["id"]]) == []


async def cancel_restores_every_line_once_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """A confirmed order of several lines cancelled twice (and once more at once): every
    line's units come back, once."""
    a = await create_product(client, product_url, "Cancel A", 1, 6)
    b = await create_product(client, product_url, "Cancel B", 2, 6)
    c = await create_product(client, product_url, "Cancel C", 3, 6)
    ids = [a["id"], b["id"], c["id"]]
    order = await place(client, order_url, [(c["id"], 2), (a["id"], 5), (b["id"], 1), (c["id"], 3)])
    assert (await settled(client, order_url, order["id"]))["status"] == "confirmed"
    assert await stocks(client, product_url, ids) == [1, 5, 1]

    first = await client.post(f"{order_url}/orders/{order['id']}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled", first.text
    more = await asyncio.gather(
        *(client.post(f"{order_url}/orders/{order['id']}/cancel") for _ in range(3))
    )
    assert [(r.status_code, r.json()["status"]) for r in more] == [(200, "cancelled")] * 3
    await quiet()
    assert await stocks(client, product_url, ids) == [6, 6, 6]
    body = (await client.get(f"{order_url}/orders/{order['id']}")).json()
    assert body["status"] == "cancelled" and len(body["items"]) == 4
    assert await lines_ledger_violations(database_url, ids) == []


async def queries_by_product_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """GET /orders?product_id= and GET /orders/product/{id} find every order with a line
    for the product, one-line and several-line alike, once each, oldest first, through
    the cursor's Link headers; filtered by status too."""
    wanted = await create_product(client, product_url, "Queried", 1, 100)
    other = await create_product(client, product_url, "Beside", 1, 100)
    w, o = wanted["id"], other["id"]
    shapes: list[list[tuple[int, int]]] = [
        [(w, 1)],
        [(o, 1), (w, 1)],
        [(o, 1)],
        [(w, 1), (o, 2), (w, 1)],
        [(o, 1), (o, 1)],
    ]
    placed: list[tuple[int, bool]] = []
    for n in range(11):  # one at a time: ids in the order they were placed
        lines = shapes[n % 5]
        if len(lines) == 1:
            response = await client.post(
                f"{order_url}/orders", json={"product_id": lines[0][0], "quantity": lines[0][1]}
            )
            assert response.status_code == 201, response.text
            order_id = response.json()["id"]
        else:
            order_id = (await place(client, order_url, lines))["id"]
        placed.append((order_id, any(p == w for p, _ in lines)))
    expected = [i for i, has in placed if has]
    for order_id, _ in placed:
        await settled(client, order_url, order_id)

    for url in (
        f"{order_url}/orders?product_id={w}&limit=2",
        f"{order_url}/orders/product/{w}?limit=3",
        f"{order_url}/orders?product_id={w}&status=confirmed&limit=1",
    ):
        found, _ = await follow_links(client, url)
        assert [f["id"] for f in found] == expected, url
    whole = (await client.get(f"{order_url}/orders?product_id={w}")).json()
    assert [len(f["items"]) for f in whole] == [1, 2, 3, 1, 2, 3, 1]
    none, _ = await follow_links(client, f"{order_url}/orders?product_id={w}&status=failed")
    assert none == []


async def concurrent_opposite_orders_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """Pairs of orders over the same products in opposite line order, all at once, more
    than the stock holds: every order settles, a confirmed one took all its lines, the
    stock never goes below zero and the lines held match the ledger."""
    made = [await create_product(client, product_url, f"Pairs {i}", 1 + i, 12) for i in range(3)]
    ids = [p["id"] for p in made]
    rng = random.Random(5)
    shapes = []
    for _ in range(15):
        forward = [(p, rng.randint(1, 3)) for p in rng.sample(ids, rng.randint(2, 3))]
        shapes += [forward, forward[::-1]]
    answers = await asyncio.gather(
        *(
            client.post(
                f"{order_url}/orders",
                json={"items": [{"product_id": p, "quantity": q} for p, q in lines]},
            )
            for lines in shapes
        )
    )
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    bodies = [await settled(client, order_url, a.json()["id"]) for a in answers]
    taken = dict.fromkeys(ids, 0)
    for body, lines in zip(bodies, shapes, strict=True):
        # Written in group commits: each order has its own lines, under its own id.
        assert [(i["product_id"], i["quantity"]) for i in body["items"]] == lines
        if body["status"] == "confirmed":
            assert all(i["unit_price"] is not None for i in body["items"])
            for p, q in lines:
                taken[p] += q
        else:
            assert body["failure"]["reason"] == UNAVAILABLE and body["failure"]["lines"]
    left = await stocks(client, product_url, ids)
    assert all(q >= 0 for q in left)
    assert [12 - taken[p] for p in ids] == left
    assert 0 < sum(b["status"] == "confirmed" for b in bodies) < len(bodies)
    await quiet()
    assert await lines_ledger_violations(database_url, ids) == []


async def idempotent_items_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """An Idempotency-Key with items: the same items again (either spelling, the total as
    another number) replay the order, many at once make one order, other items are 422
    and create nothing; the stock is taken once."""
    a = await create_product(client, product_url, "Keyed A", 2, 50)
    b = await create_product(client, product_url, "Keyed B", 3, 50)
    items = [{"product_id": a["id"], "quantity": 2}, {"product_id": b["id"], "quantity": 1}]

    async def post(key: str, body: dict[str, Any]) -> httpx.Response:
        return await client.post(f"{order_url}/orders", json=body, headers={"Idempotency-Key": key})

    first = await post("lines-1", {"items": items, "total_price": 7})
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    camel = [{"productId": a["id"], "quantity": 2}, {"productId": b["id"], "quantity": 1}]
    replay = await post("lines-1", {"items": camel, "totalPrice": 7.0})
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    for other in (
        {"items": items[::-1], "total_price": 7},
        {"items": items[:1], "total_price": 7},
        {"items": [{**items[0], "quantity": 3}, items[1]], "total_price": 7},
        {"items": items},
    ):
        reused = await post("lines-1", other)
        assert reused.status_code == 422, (other, reused.text)
        assert reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    answers = await asyncio.gather(*(post("lines-2", {"items": items}) for _ in range(10)))
    assert all(r.status_code == 201 for r in answers), [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    one = await post("lines-3", {"product_id": a["id"], "quantity": 4})
    as_items = await post("lines-3", {"items": [{"product_id": a["id"], "quantity": 4}]})
    assert as_items.json()["id"] == one.json()["id"]

    for order_id in {first.json()["id"], answers[0].json()["id"], one.json()["id"]}:
        assert (await settled(client, order_url, order_id))["status"] == "confirmed"
    assert await stocks(client, product_url, [a["id"], b["id"]]) == [50 - 2 - 2 - 4, 48]
    await quiet()
    assert await lines_ledger_violations(database_url, [a["id"], b["id"]]) == []


async def hundred_lines_flow(
    client: httpx.AsyncClient, product_url: str, order_url: str, database_url: str, quiet: Quiet
) -> None:
    """The most lines an order may have, each a product of its own, all looked up, locked,
    priced and answered: confirmed with the catalog total; one line short fails all 100."""
    made = await asyncio.gather(
        *(create_product(client, product_url, f"Line {i}", (i + 1) / 100, 3) for i in range(100))
    )
    ids = [p["id"] for p in made]
    lines = [(pid, 1 + n % 3) for n, pid in enumerate(ids)]
    catalog = sum((n + 1) * q for n, (_, q) in enumerate(lines)) / 100
    order = await place(client, order_url, lines, catalog)
    body = await settled(client, order_url, order["id"])
    assert body["status"] == "confirmed", body
    assert body["total_price"] == catalog and len(body["items"]) == 100
    left = await stocks(client, product_url, ids)
    assert left == [3 - q for _, q in lines]

    again = await place(client, order_url, [(pid, 1) for pid in ids])
    body = await settled(client, order_url, again["id"])
    assert body["status"] == "failed", body
    short = [(s["product_id"], s["requested"], s["available"]) for s in body["failure"]["lines"]]
    assert short == sorted((pid, 1, 0) for pid in ids[2::3])  # those at 0, by product id
    assert await stocks(client, product_url, ids) == left
    await quiet()
    assert await lines_ledger_violations(database_url, ids) == []

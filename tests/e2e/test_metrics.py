"""/metrics on running services: the embedded default (`orderstack dev`) and the real stack
(two product replicas, one order service, MariaDB, RabbitMQ, Redis). Every metric the
README names is there, and the counts move by exactly what the test did."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.stack import Stack

from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

EVERY_SERVICE = {
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_request_duration_seconds_count",
    "http_request_duration_seconds_sum",
    "outbox_unsent_events",
    "outbox_oldest_unsent_age_seconds",
    "events_published_total",
    "events_consumed_total",
    "dead_letter_queue_messages",
    "cache_requests_total",
    "requests_shed_total",
    "db_pool_in_use",
}
ORDER_SERVICE = EVERY_SERVICE | {"orders_total"}
PRODUCT_SERVICE = EVERY_SERVICE | {"stock_reservations_total"}
ORDERS = 5


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: list[Samples], name: str, **labels: str) -> float:
    """The sum over replicas of one series."""
    key = (name, frozenset(labels.items()))
    return sum(s.get(key, 0.0) for s in samples)


async def metrics_flow(client: httpx.AsyncClient, product_urls: list[str], order_url: str) -> None:
    async def scrape_all() -> tuple[Samples, list[Samples]]:
        products = [await scrape(client, url) for url in product_urls]
        return await scrape(client, order_url), products

    before_orders, before_products = await scrape_all()
    product = await create_product(client, product_urls[0], "Metered", 1, ORDERS)
    placed = [
        await client.post(
            f"{order_url}/orders", json={"product_id": product["id"], "total_price": 1}
        )
        for _ in range(ORDERS)
    ]
    assert all(r.status_code == 201 for r in placed)
    unknown = await client.post(f"{order_url}/orders", json={"product_id": 0, "total_price": 1})
    assert unknown.status_code == 400
    settled = [await wait_terminal(client, order_url, r.json()["id"]) for r in placed]
    assert [o["status"] for o in settled] == ["confirmed"] * ORDERS

    def moved(after: list[Samples], before: list[Samples], name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # Counted after their commits: the answers' consumption, and the product relay's
    # publish (the order service may consume an answer before the relay marks it sent).
    done = {"event": "order.qty_confirmed", "outcome": "applied"}
    for _ in range(100):
        orders, products = await scrape_all()
        if (
            moved([orders], [before_orders], "events_consumed_total", **done) == ORDERS
            and moved(products, before_products, "events_published_total", event=done["event"])
            == ORDERS
            and total([orders], "outbox_unsent_events") == 0
        ):
            break
        await asyncio.sleep(0.1)

    assert not ORDER_SERVICE - {name for name, _ in orders}
    for samples in products:
        assert not PRODUCT_SERVICE - {name for name, _ in samples}

    o, bo = [orders], [before_orders]
    assert moved(o, bo, "orders_total", status="pending") == ORDERS
    assert moved(o, bo, "orders_total", status="confirmed") == ORDERS
    assert moved(o, bo, "orders_total", status="failed") == 0
    assert moved(o, bo, "events_published_total", event="order.created") == ORDERS
    created = {"method": "POST", "route": "/orders", "status": "201"}
    assert moved(o, bo, "http_requests_total", **created) == ORDERS
    refused = {"method": "POST", "route": "/orders", "status": "400"}
    assert moved(o, bo, "http_requests_total", **refused) == 1
    by_id = {"method": "GET", "route": "/orders/{order_id}", "status": "200"}
    assert moved(o, bo, "http_requests_total", **by_id) >= ORDERS
    assert total(o, "outbox_unsent_events") == 0
    assert total(o, "requests_shed_total") == 0

    p, bp = products, before_products
    assert moved(p, bp, "stock_reservations_total", outcome="confirmed") == ORDERS
    assert moved(p, bp, "stock_reservations_total", outcome="failed") == 0
    applied = {"event": "order.created", "outcome": "applied"}
    assert moved(p, bp, "events_consumed_total", **applied) == ORDERS
    assert moved(p, bp, "events_published_total", event="order.qty_confirmed") == ORDERS
    posted = {"method": "POST", "route": "/products", "status": "201"}
    assert moved(p, bp, "http_requests_total", **posted) == 1
    assert total(o, "dead_letter_queue_messages", queue="order-service.events.dlq") == 0
    assert total(p, "dead_letter_queue_messages", queue="product-service.events.dlq") == 0


async def test_metrics_count_what_was_done_embedded(dev: tuple[str, str]) -> None:
    product_url, order_url = dev
    async with httpx.AsyncClient(timeout=10) as client:
        await metrics_flow(client, [product_url], order_url)


async def test_metrics_count_what_was_done_on_the_real_stack(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await metrics_flow(client, [p.url for p in stack.products], stack.order_url)

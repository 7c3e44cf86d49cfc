"""/metrics: both services built in process on the embedded adapters (a SQLite file, the
in-process bus and cache), driven over ASGI, scraped and parsed with prometheus_client's
own parser; the values must move as the requests, orders and events did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from orderstack.bootstrap import order_app, product_app
from orderstack.config import Settings, load_settings
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.envelope import Event
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.metrics import outbox_families
from orderstack.messaging.outbox import OutboxRelay, OutboxWriter, outbox_table
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.storage.engine import create_engine
from orderstack.web.app import base_app
from orderstack.web.limits import LimitCounts
from orderstack.web.metrics import AppMetrics, HttpStats, add_metrics_route, http_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@dataclass
class Services:
    products: httpx.AsyncClient
    orders: httpx.AsyncClient
    bus: InProcessBus

    async def scrape(self, client: httpx.AsyncClient) -> Samples:
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(response.text)

    async def settled(self, order_id: int) -> dict[str, object]:
        for _ in range(200):
            order: dict[str, object] = (await self.orders.get(f"/orders/{order_id}")).json()
            if order["status"] != "pending":
                return order
            await asyncio.sleep(0.02)
        raise AssertionError(f"order {order_id} never settled")

    async def until(self, client: httpx.AsyncClient, check: Callable[[Samples], bool]) -> Samples:
        """Scrape until ``check`` holds (the consumers settle in the background)."""
        for _ in range(200):
            samples = await self.scrape(client)
            if check(samples):
                return samples
            await asyncio.sleep(0.02)
        raise AssertionError(f"metrics never got there: {samples}")


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(
        DATABASE_URL=f"sqlite:///{tmp_path / 'orderstack.db'}",
        LOCAL_BUS_PATH=":memory:",
        BATCH_LINGER_SECONDS=0,
        **overrides,
    )


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = settings_for(tmp_path)
    infra = Infrastructure.from_settings(settings, both_services=True)
    products, orders = product_app(settings, infra), order_app(settings, infra)
    async with AsyncExitStack() as stack:
        for app in (products, orders):
            await stack.enter_async_context(app.router.lifespan_context(app))
        for _ in range(200):  # the bus starts in the background
            if await infra.bus.is_up():
                break
            await asyncio.sleep(0.01)
        assert isinstance(infra.bus, InProcessBus)
        yield Services(
            await stack.enter_async_context(client(products)),
            await stack.enter_async_context(client(orders)),
            infra.bus,
        )
    await infra.close()


async def new_product(services: Services, qty: int = 10) -> int:
    response = await services.products.post(
        "/products", json={"name": "Widget", "price": 5, "qty": qty}
    )
    assert response.status_code == 201
    product_id: int = response.json()["id"]
    return product_id


async def test_requests_are_counted_by_route_template_method_and_status(
    services: Services,
) -> None:
    product_id = await new_product(services)
    for _ in range(2):
        assert (await services.products.get(f"/products/{product_id}")).status_code == 200
    assert (await services.products.get("/products/424242")).status_code == 404
    assert (await services.products.get("/no/such/route")).status_code == 404
    await services.products.get("/metrics")

    samples = await services.scrape(services.products)

    route = "/products/{product_id}"
    assert value(samples, "http_requests_total", method="POST", route="/products", status="201")
    assert value(samples, "http_requests_total", method="GET", route=route, status="200") == 2
    assert value(samples, "http_requests_total", method="GET", route=route, status="404") == 1
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(samples, "http_requests_total", **unmatched) == 1
    count = value(samples, "http_request_duration_seconds_count", method="GET", route=route)
    assert count == 3
    inf = value(
        samples, "http_request_duration_seconds_bucket", method="GET", route=route, le="+Inf"
    )
    assert inf == 3
    # The raw path never becomes a label, and /metrics does not count itself.
    labels = {dict(key).get("route") for _, key in samples}
    assert f"/products/{product_id}" not in labels and "/metrics" not in labels


async def test_one_order_moves_the_metrics_of_both_services(services: Services) -> None:
    product_id = await new_product(services, qty=10)
    before = await services.scrape(services.orders)
    response = await services.orders.post(
        "/orders", json={"product_id": product_id, "total_price": 10, "quantity": 2}
    )
    assert response.status_code == 201
    assert (await services.settled(response.json()["id"]))["status"] == "confirmed"

    orders = await services.until(
        services.orders,
        lambda s: (
            value(s, "events_consumed_total", event="order.qty_confirmed", outcome="applied") == 1
        ),
    )
    assert value(orders, "orders_total", status="pending") == 1
    assert value(orders, "orders_total", status="confirmed") == 1
    assert value(orders, "orders_total", status="failed") == 0
    assert value(orders, "events_published_total", event="order.created") == 1
    hits = value(orders, "cache_requests_total", result="hit")
    assert hits == value(before, "cache_requests_total", result="hit") + 1
    order_route = {"method": "POST", "route": "/orders", "status": "201"}
    assert value(orders, "http_requests_total", **order_route) == 1

    products = await services.until(
        services.products,
        lambda s: value(s, "events_published_total", event="order.qty_confirmed") == 1,
    )
    assert value(products, "stock_reservations_total", outcome="confirmed") == 1
    assert value(products, "stock_reservations_total", outcome="failed") == 0
    consumed = {"event": "order.created", "outcome": "applied"}
    assert value(products, "events_consumed_total", **consumed) == 1
    assert value(products, "events_published_total", event="product_created") == 1
    for samples in (orders, products):
        assert value(samples, "outbox_unsent_events") == 0
        assert value(samples, "outbox_oldest_unsent_age_seconds") == 0
        assert value(samples, "requests_shed_total") == 0
        assert "db_pool_in_use" in names(samples)
        assert all(v == 1 for (n, _), v in samples.items() if n == "metrics_source_up")


async def test_batch_sizes_count_every_order_once_at_each_stage(services: Services) -> None:
    """batch_size{stage}: concurrent orders share intake batches; each order is one item of
    an intake batch, one of a relay batch and one of a consumer transaction on each side."""
    product_id = await new_product(services, qty=20)
    await services.until(
        services.products,
        lambda s: value(s, "batch_size_sum", stage="relay") == 1,  # its product_created
    )
    before = {side: await services.scrape(side) for side in (services.orders, services.products)}
    body = {"product_id": product_id, "total_price": 5}
    answers = await asyncio.gather(*(services.orders.post("/orders", json=body) for _ in range(6)))
    assert all(r.status_code == 201 for r in answers)
    for r in answers:
        assert (await services.settled(r.json()["id"]))["status"] == "confirmed"

    def moved(samples: Samples, side: httpx.AsyncClient, name: str, stage: str) -> float:
        return value(samples, name, stage=stage) - value(before[side], name, stage=stage)

    orders = await services.until(
        services.orders, lambda s: moved(s, services.orders, "batch_size_sum", "consumer") == 6
    )
    products = await services.until(
        services.products, lambda s: moved(s, services.products, "batch_size_sum", "relay") == 6
    )
    for side, samples, stages in (
        (services.orders, orders, ("intake", "relay", "consumer")),
        (services.products, products, ("relay", "consumer")),
    ):
        for stage in stages:
            assert moved(samples, side, "batch_size_sum", stage) == 6, stage
            batches = moved(samples, side, "batch_size_count", stage)
            assert 1 <= batches <= 6, stage
            inf = {"stage": stage, "le": "+Inf"}
            assert value(samples, "batch_size_bucket", **inf) == value(
                samples, "batch_size_count", stage=stage
            )
    assert ("batch_size_sum", frozenset({("stage", "intake")})) not in products


async def test_a_second_delivery_counts_as_duplicate_and_bad_input_as_dead_lettered(
    services: Services,
) -> None:
    product_id = await new_product(services)
    created = Event(
        "order.created",
        {
            "orderId": 7001,
            "productId": product_id,
            "totalPrice": 5,
            "quantity": 1,
            "timestamp": "2025-09-20T10:30:00Z",
        },
        id="evt-7001",
    )
    await services.bus.publish([created])
    await services.bus.publish([created])
    await services.bus.publish_raw(
        PRODUCT_SERVICE_QUEUE.name, b"not json", "bad-1", "order.created"
    )
    await services.bus.publish_raw(PRODUCT_SERVICE_QUEUE.name, b"{}", "bad-2", "no.such.event")

    dlq = {"queue": PRODUCT_SERVICE_QUEUE.dead_letter_queue}

    def all_settled(s: Samples) -> bool:
        # The dead-letter depth is a broker reading, reused for a second (web/metrics.py).
        consumed = sum(v for (n, _), v in s.items() if n == "events_consumed_total")
        return consumed == 4 and value(s, "dead_letter_queue_messages", **dlq) == 2

    samples = await services.until(services.products, all_settled)

    consumed = "events_consumed_total"
    assert value(samples, consumed, event="order.created", outcome="applied") == 1
    assert value(samples, consumed, event="order.created", outcome="duplicate") == 1
    assert value(samples, consumed, event="order.created", outcome="dead_lettered") == 1
    assert value(samples, consumed, event="unknown", outcome="dead_lettered") == 1
    assert value(samples, consumed, event="order.cancelled", outcome="applied") == 0
    assert value(samples, "dead_letter_queue_messages", **dlq) == 2
    assert value(samples, "stock_reservations_total", outcome="confirmed") == 1


async def test_the_outbox_backlog_and_its_age_are_read_at_scrape_time(tmp_path: Path) -> None:
    engine = create_engine(sa.make_url(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"))
    table = outbox_table(sa.MetaData(), "test")
    bus = InProcessBus()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
            await OutboxWriter(conn, table).add([Event("product_created", {}) for _ in range(3)])
        relay = OutboxRelay(engine, table, bus)
        await asyncio.sleep(0.05)

        waiting = parse_families(await outbox_families(relay))
        assert waiting["outbox_unsent_events"] == 3
        assert 0.05 <= waiting["outbox_oldest_unsent_age_seconds"] < 60

        await bus.start()
        assert await relay.relay_once() == 3
        sent = parse_families(await outbox_families(relay))
        assert sent == {"outbox_unsent_events": 0, "outbox_oldest_unsent_age_seconds": 0}
        assert relay.published_by_event == {"product_created": 3}
    finally:
        await bus.close()
        await engine.dispose()


def parse_families(families: list[object]) -> dict[str, float]:
    return {s.name: s.value for f in families for s in f.samples}  # type: ignore[attr-defined]


async def test_shed_requests_are_counted_and_metrics_is_never_shed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, MAX_IN_FLIGHT=1)
    stats, limits, release = HttpStats(), LimitCounts(), asyncio.Event()
    app = base_app("t", "seed", settings, _no_lifespan, http_stats=stats, limit_counts=limits)
    metrics = AppMetrics(timeout=1.0)
    metrics.add("http", lambda: http_families(stats, limits))
    add_metrics_route(app, metrics)

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await release.wait()
        return {}

    async with client(app) as http:
        held = asyncio.create_task(http.get("/slow"))
        await asyncio.sleep(0.05)
        assert (await http.get("/slow")).status_code == 503
        scraped = await http.get("/metrics")  # exempt, while the one slot is taken
        release.set()
        assert (await held).status_code == 200
        after = parse((await http.get("/metrics")).text)

    assert scraped.status_code == 200
    assert value(parse(scraped.text), "requests_shed_total") == 1
    assert value(after, "http_requests_total", method="GET", route="/slow", status="200") == 1
    # A shed request is counted once, as shed, not as an answered request.
    assert value(after, "http_requests_total", method="GET", route="unmatched", status="503") == 0


async def test_a_failing_source_is_left_out_and_the_others_are_still_answered() -> None:
    stats, limits = HttpStats(), LimitCounts()
    metrics = AppMetrics(timeout=0.1)
    metrics.add("http", lambda: http_families(stats, limits))

    async def broken() -> list[object]:
        raise OSError("database gone")

    async def stuck() -> list[object]:
        await asyncio.sleep(10)
        return []

    metrics.add("outbox", broken)  # type: ignore[arg-type]
    metrics.add("dead_letters", stuck)  # type: ignore[arg-type]

    samples = parse((await metrics.render()).decode())

    assert value(samples, "metrics_source_up", source="http") == 1
    assert value(samples, "metrics_source_up", source="outbox") == 0
    assert value(samples, "metrics_source_up", source="dead_letters") == 0
    assert "requests_shed_total" in names(samples)


async def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, METRICS_ENABLED=False)
    infra = Infrastructure.from_settings(settings, both_services=True)
    app = product_app(settings, infra)
    try:
        async with client(app) as http:
            assert (await http.get("/metrics")).status_code == 404
    finally:
        await infra.close()


@asynccontextmanager
async def _no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield

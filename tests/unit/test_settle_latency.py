"""The settle delay behind the settle-latency SLO (deploy/alerts.yml): each order accepted
and settled by one order service is observed once, with the seconds from its created_at to
the commit that settled it, and shows on /metrics as order_settle_duration_seconds."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orderstack.orders.domain import OrderStatus, SettleOrder
from orderstack.orders.service import SETTLE_BUCKETS, OrderService
from orderstack.web.metrics import Histogram
from tests.unit.embedded_apps import running_apps
from tests.unit.fakes import Clock, FakeCatalog, FakeOrderDatabase

Seen = list[tuple[OrderStatus, float]]


@pytest.fixture
def seen() -> Seen:
    return []


@pytest.fixture
def observed_service(
    order_db: FakeOrderDatabase, catalog: FakeCatalog, clock: Clock, seen: Seen
) -> OrderService:
    return OrderService(
        order_db.unit_of_work,
        catalog,
        clock,
        settle_observer=lambda status, seconds: seen.append((status, seconds)),
    )


async def settle(db: FakeOrderDatabase, service: OrderService, *answers: SettleOrder) -> None:
    async with db.unit_of_work() as uow:
        await service.settle_orders(uow, answers)
        await uow.commit()


async def test_each_settled_order_is_observed_once_with_the_seconds_from_its_created_at(
    observed_service: OrderService, order_db: FakeOrderDatabase, clock: Clock, seen: Seen
) -> None:
    first, _ = await observed_service.create_order(1, Decimal(10))
    clock.advance(0.5)
    second, _ = await observed_service.create_order(2, Decimal(10))
    clock.advance(1.25)

    await settle(
        order_db,
        observed_service,
        SettleOrder(first.id, OrderStatus.CONFIRMED),
        SettleOrder(second.id, OrderStatus.FAILED),
    )
    # A redelivered answer, and a later contradicting one, move nothing: not observed again.
    await settle(order_db, observed_service, SettleOrder(first.id, OrderStatus.FAILED))
    await settle(order_db, observed_service, SettleOrder(second.id, OrderStatus.FAILED))

    assert sorted(seen) == [(OrderStatus.CONFIRMED, 1.75), (OrderStatus.FAILED, 1.25)]


async def test_nothing_is_observed_before_the_commit(
    observed_service: OrderService, order_db: FakeOrderDatabase, seen: Seen
) -> None:
    order, _ = await observed_service.create_order(1, Decimal(10))

    async with order_db.unit_of_work() as uow:  # rolled back: never committed
        await observed_service.settle_orders(uow, [SettleOrder(order.id, OrderStatus.CONFIRMED)])

    assert seen == []


async def test_an_order_cancelled_or_accepted_elsewhere_is_not_observed(
    observed_service: OrderService, order_db: FakeOrderDatabase, catalog: FakeCatalog, seen: Seen
) -> None:
    cancelled, _ = await observed_service.create_order(1, Decimal(10))
    await observed_service.cancel_order(cancelled.id)
    # Another replica (another service on the same database) accepted this one.
    elsewhere = OrderService(order_db.unit_of_work, catalog)
    theirs, _ = await elsewhere.create_order(1, Decimal(10))

    await settle(order_db, observed_service, SettleOrder(theirs.id, OrderStatus.CONFIRMED))

    assert seen == []


def test_the_histogram_is_cumulative_with_each_status_there_from_the_start() -> None:
    histogram = Histogram("h_seconds", "doc", "status", (0.1, 1.0), ("confirmed", "failed"))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(OrderStatus.CONFIRMED, seconds)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for s in histogram.family().samples
    }

    def bucket(status: str, le: str) -> float:
        return samples[("h_seconds_bucket", (("le", le), ("status", status)))]

    assert [bucket("confirmed", le) for le in ("0.1", "1.0", "+Inf")] == [2, 3, 4]
    assert samples[("h_seconds_count", (("status", "confirmed"),))] == 4
    assert samples[("h_seconds_sum", (("status", "confirmed"),))] == pytest.approx(3.65)
    assert [bucket("failed", le) for le in ("0.1", "1.0", "+Inf")] == [0, 0, 0]


async def test_the_order_service_shows_its_settle_delays_on_metrics(tmp_path: Path) -> None:
    """Both embedded services in process: the order service's /metrics counts each order it
    accepted and settled in order_settle_duration_seconds, by status, in buckets that hold
    the SLO's bound (1 s)."""
    async with running_apps(tmp_path) as apps:
        created = await apps.product_http.post(
            "/products", json={"name": "Widget", "price": 5, "qty": 2}
        )
        product_id = created.json()["id"]
        for _ in range(3):  # two confirmed, then one failed (out of stock)
            placed = await apps.order_http.post("/orders", json={"product_id": product_id})
            assert placed.status_code == 201
        counts: dict[str, float] = {}
        for _ in range(250):
            text = (await apps.order_http.get("/metrics")).text
            [family] = [
                f
                for f in text_string_to_metric_families(text)
                if f.name == "order_settle_duration_seconds"
            ]
            counts = {
                s.labels["status"]: s.value for s in family.samples if s.name.endswith("_count")
            }
            if sum(counts.values()) == 3:
                break
            await asyncio.sleep(0.02)
    assert counts == {"confirmed": 2, "failed": 1}
    assert family.type == "histogram"
    bounds = {s.labels["le"] for s in family.samples if s.name.endswith("_bucket")}
    assert "1.0" in bounds and len(bounds) == len(SETTLE_BUCKETS) + 1

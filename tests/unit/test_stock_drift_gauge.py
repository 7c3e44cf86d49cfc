"""``stock_drift_units`` (products/drift.py) in process, on the embedded default's SQLite: the
measure is the ledger check of ``orderstack reconcile``, taken by the periodic task and
never by a scrape (a drift written between two rounds does not show however often
``/metrics`` is scraped, and shows at the next round); ``STOCK_DRIFT_CHECK_SECONDS=0``
shows no gauge at all. The real stack and ``orderstack dev``:
tests/e2e/test_stock_drift_gauge.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import httpx
import sqlalchemy as sa
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from orderstack.products.drift import StockDriftGauge
from orderstack.products.repository import products
from orderstack.storage.engine import create_engine
from tests.unit.embedded_apps import running_apps


def _drift_samples(families: Iterable[Metric]) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("kind", "")): sample.value
        for family in families
        for sample in family.samples
        if sample.name.startswith("stock_drift")
    }


async def _scrape(http: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return _drift_samples(text_string_to_metric_families(response.text))


async def test_drift_shows_at_the_next_round_never_at_a_scrape(tmp_path: Path) -> None:
    # One round at start, the next an hour later: the test takes the rounds itself.
    async with running_apps(tmp_path, STOCK_DRIFT_CHECK_SECONDS=3600) as apps:
        infra, http = apps.infra, apps.product_http
        created = await http.post("/products", json={"name": "W", "price": 1, "qty": 5})
        assert created.status_code == 201
        product_id = created.json()["id"]
        for _ in range(200):  # the round at start, in the background
            seen = await _scrape(http)
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen[("stock_drift_units", "")] == 0
        assert seen[("stock_drift_products", "stock_drift")] == 0
        checked = seen[("stock_drift_checked_timestamp_seconds", "")]

        async with infra.engine.begin() as conn:
            await conn.execute(products.update().where(products.c.id == product_id).values(qty=8))
        for _ in range(5):  # however often scraped, a scrape measures nothing
            seen = await _scrape(http)
            assert seen[("stock_drift_units", "")] == 0
            assert seen[("stock_drift_checked_timestamp_seconds", "")] == checked

        gauge = StockDriftGauge(infra.engine, 3600)  # what the next round reads
        reading = await gauge.run_once()
        assert (reading.drift_units, reading.drifted, reading.negative) == (3, 1, 0)
        shown = _drift_samples(gauge.families())
        assert shown[("stock_drift_units", "")] == 3
        assert shown[("stock_drift_products", "stock_drift")] == 1


async def test_no_gauge_when_the_check_is_off(tmp_path: Path) -> None:
    async with running_apps(tmp_path, STOCK_DRIFT_CHECK_SECONDS=0) as apps:
        await asyncio.sleep(0.05)
        assert await _scrape(apps.product_http) == {}


async def test_no_gauge_before_the_first_round(tmp_path: Path) -> None:
    """A missing series, not a false 0, until a round answered."""
    engine = create_engine(sa.make_url(f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"))
    try:
        assert StockDriftGauge(engine, 60).families() == []
    finally:
        await engine.dispose()

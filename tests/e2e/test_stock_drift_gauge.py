"""``stock_drift_units`` on the product service's ``/metrics``, on the real stack (MariaDB,
RabbitMQ, Redis; a product replica as its own process) and on the embedded default
(``orderstack dev``, SQLite), each with ``STOCK_DRIFT_CHECK_SECONDS=1``: a ledger the
services wrote shows 0; a product's stock changed in the database behind their back shows
as its units (and one product in ``stock_drift_products``) within the interval; the
``reconcile`` entry that ``orderstack reconcile --fix`` writes brings it back to 0."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from harness.processes import EmbeddedDev
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack import reconcile
from orderstack.products.repository import products
from orderstack.storage.engine import create_engine

from .conftest import UNHURRIED
from .test_metrics import Samples, scrape
from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e

INTERVAL = 1.0
# A round every INTERVAL (shortened by up to a fifth at random), then the scrape: a reading
# older than this after the change is a gauge that does not follow the database.
WITHIN = INTERVAL + 4.0
DRIFT_ENV = {"STOCK_DRIFT_CHECK_SECONDS": str(INTERVAL)}


@pytest.fixture(scope="module")
def drift_stack(
    make_sandbox: Callable[..., Sandbox], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    running = Stack(
        make_sandbox("drift", "mariadb"),
        tmp_path_factory.mktemp("drift-logs"),
        extra_env={**UNHURRIED, **DRIFT_ENV},
    ).start()
    try:
        running.wait_ready(timeout=30)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def drift_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedDev, Path]]:
    workdir = tmp_path_factory.mktemp("drift-dev")
    dev = EmbeddedDev(workdir, env=DRIFT_ENV)
    process = dev.process().start()
    try:
        process.wait_healthy()
        yield dev, workdir / "orderstack.db"
    finally:
        process.stop()


def _drift(samples: Samples) -> tuple[float | None, float | None]:
    """(stock_drift_units, stock_drift_products{kind=stock_drift}); None: not shown."""
    units = samples.get(("stock_drift_units", frozenset()))
    drifted = samples.get(("stock_drift_products", frozenset({("kind", "stock_drift")})))
    return units, drifted


async def _until_shown(
    client: httpx.AsyncClient, product_url: str, units: float, products_off: float
) -> float:
    """Seconds until the product service's /metrics shows this drift (fails past WITHIN)."""
    started = time.monotonic()
    while True:
        seen = _drift(await scrape(client, product_url))
        if seen == (units, products_off):
            return time.monotonic() - started
        assert time.monotonic() - started < WITHIN, f"still {seen}, not {(units, products_off)}"
        await asyncio.sleep(0.1)


async def _flow(
    product_url: str,
    order_url: str,
    change_qty: Callable[[int, int], Awaitable[None]],
    fix: Callable[[], Awaitable[reconcile.Report]],
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, product_url, "Drifting", 3, 10)
        placed = await client.post(
            f"{order_url}/orders", json={"product_id": product["id"], "quantity": 2}
        )
        assert placed.status_code == 201, placed.text
        assert (await wait_terminal(client, order_url, placed.json()["id"]))["status"] == (
            "confirmed"
        )
        await _until_shown(client, product_url, 0, 0)  # what the services wrote is clean

        await change_qty(product["id"], +3)
        took = await _until_shown(client, product_url, 3, 1)
        print(f"stock_drift_units showed the drift {took:.2f} s after it was written")

        report = await fix()
        assert [(f.product_id, f.delta) for f in report.fixed] == [(product["id"], 3)]
        await _until_shown(client, product_url, 0, 0)


async def test_drift_written_into_mariadb_shows_on_metrics(drift_stack: Stack) -> None:
    engine = create_engine(drift_stack.sandbox.engine_url, pool_size=2)

    async def change_qty(product_id: int, by: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                products.update().where(products.c.id == product_id).values(qty=products.c.qty + by)
            )

    async def fix() -> reconcile.Report:
        return await reconcile.reconcile(engine, pending_older_than=3600, fix=True)

    try:
        await _flow(drift_stack.product_url, drift_stack.order_url, change_qty, fix)
    finally:
        await engine.dispose()


async def test_drift_written_into_the_embedded_default_shows_on_metrics(
    drift_dev: tuple[EmbeddedDev, Path],
) -> None:
    dev, database = drift_dev

    async def change_qty(product_id: int, by: int) -> None:
        def write() -> None:
            with sqlite3.connect(database, timeout=10) as conn:
                conn.execute("UPDATE products SET qty = qty + ? WHERE id = ?", (by, product_id))

        await asyncio.to_thread(write)

    async def fix() -> reconcile.Report:
        engine = create_engine(sa.make_url(f"sqlite+aiosqlite:///{database}"))
        try:
            return await reconcile.reconcile(engine, pending_older_than=3600, fix=True)
        finally:
            await engine.dispose()

    await _flow(dev.product_url, dev.order_url, change_qty, fix)

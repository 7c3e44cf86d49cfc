"""`python -m orderstack reconcile` as an operator runs it, on the database of a running
`orderstack dev` (the embedded default) after orders were placed, settled and cancelled over
HTTP: clean (exit 0); a product's stock changed behind the services' back is found (exit 1),
``--fix`` writes its ``reconcile`` ledger entry while the services run, and the next run is
clean."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from harness.invariants import settlement, unconsumed_events
from harness.processes import SERVER_VARIABLES, EmbeddedDev, run_command

from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedDev, Path]]:
    workdir = tmp_path_factory.mktemp("reconcile")
    dev = EmbeddedDev(workdir)
    process = dev.process().start()
    try:
        process.wait_healthy()
        yield dev, workdir / "orderstack.db"
    finally:
        process.stop()


def _reconcile(database: Path, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}
    return run_command(["reconcile", *args], {**clean, "DATABASE_URL": f"sqlite:///{database}"})


async def _quiet(database_url: str) -> None:
    deadline = time.monotonic() + 20
    while (await settlement(database_url, None)).unsent_events or await unconsumed_events(
        database_url
    ):
        assert time.monotonic() < deadline, "events still in flight"
        await asyncio.sleep(0.05)


async def test_reconcile_on_a_running_embedded_default(site: tuple[EmbeddedDev, Path]) -> None:
    dev, database = site
    async with httpx.AsyncClient(timeout=10) as client:
        laptop = await create_product(client, dev.product_url, "Laptop", 10, 5)
        mouse = await create_product(client, dev.product_url, "Mouse", 2, 8)
        bodies = [
            {"product_id": laptop["id"], "total_price": 10},
            {"items": [{"product_id": laptop["id"], "quantity": 2}, {"product_id": mouse["id"]}]},
            {"items": [{"product_id": mouse["id"], "quantity": 3}]},
            {"items": [{"product_id": laptop["id"], "quantity": 50}]},  # fails: not enough
        ]
        placed = []
        for body in bodies:
            response = await client.post(f"{dev.order_url}/orders", json=body)
            assert response.status_code == 201, response.text
            placed.append(response.json()["id"])
        statuses = [(await wait_terminal(client, dev.order_url, i))["status"] for i in placed]
        assert statuses == ["confirmed", "confirmed", "confirmed", "failed"]
        cancel = await client.post(f"{dev.order_url}/orders/{placed[2]}/cancel")
        assert cancel.status_code == 200, cancel.text
        await _quiet(f"sqlite:///{database}")

    result = _reconcile(database)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checked 2 products, 4 orders" in result.stdout and "clean" in result.stdout

    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE products SET qty = qty + 2 WHERE id = ?", (mouse["id"],))
    result = _reconcile(database)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"stock_drift\tproduct {mouse['id']}\t" in result.stdout
    assert "drift +2 units" in result.stdout

    fixed = _reconcile(database, "--fix", "--json")
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr
    assert [(f["product_id"], f["delta"]) for f in orjson.loads(fixed.stdout)["fixed"]] == [
        (mouse["id"], 2)
    ]
    with sqlite3.connect(database) as conn:
        entries = conn.execute(
            "SELECT product_id, delta FROM stock_adjustments WHERE reason = 'reconcile'"
        ).fetchall()
    assert entries == [(mouse["id"], 2)]
    again = _reconcile(database)
    assert again.returncode == 0, again.stdout + again.stderr

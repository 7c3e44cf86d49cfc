"""Holds on the embedded default (`orderstack dev`: SQLite, the durable local bus), with
ORDER_HOLD_SECONDS set: an order placed without ``hold_seconds`` is held; the same
workflow as on the real stack (holds_workflows.py), and the harness's invariants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.invariants import ledger_violations, line_violations, stock_violations
from harness.processes import EmbeddedDev

from .holds_workflows import HOLD, hold_flow

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def held_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedDev, Path]]:
    workdir = tmp_path_factory.mktemp("holds")
    site = EmbeddedDev(workdir, env={"ORDER_HOLD_SECONDS": str(HOLD)})
    process = site.process().start()
    try:
        process.wait_healthy()
        yield site, workdir
    finally:
        process.stop()


async def test_holds_confirm_expire_and_cancel_embedded(
    held_dev: tuple[EmbeddedDev, Path],
) -> None:
    site, workdir = held_dev
    async with httpx.AsyncClient(timeout=10) as client:
        product_id, orders = await hold_flow(client, site.product_url, site.order_url, hold=None)
    url = f"sqlite:///{workdir / 'orderstack.db'}"
    assert await stock_violations(url, {product_id: 20}, orders) == []
    assert await line_violations(url, orders) == []
    assert await ledger_violations(url) == []

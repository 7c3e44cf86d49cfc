"""An order whose order.created was lost still settles: the sweeper sends it again."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from harness.invariants import harness_engine, settlement, stock_violations
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.orders.repository import outbox

from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e

FAST_SWEEP = {"ORDER_PENDING_RESEND_SECONDS": "1", "ORDER_SWEEP_INTERVAL_SECONDS": "0.2"}


@pytest.fixture
def healing_stack(make_sandbox: Callable[[str], Sandbox], tmp_path: Path) -> Iterator[Stack]:
    running = Stack(make_sandbox("heal"), tmp_path, extra_env=FAST_SWEEP).start()
    try:
        yield running
    finally:
        running.stop()


async def lose_unsent_order_events(database_url: str) -> int:
    """What a lost message amounts to: the row is marked sent and nothing was published."""
    engine = harness_engine(database_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                outbox.update()
                .where(outbox.c.published_at.is_(None))
                .values(published_at=sa.func.now())
            )
            return int(result.rowcount)
    finally:
        await engine.dispose()


async def test_an_order_whose_order_created_was_lost_is_settled_by_the_sweeper(
    healing_stack: Stack,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, healing_stack.product_url, "Lost", 4, 3)
        # An order service that dies after its commit and before its publish...
        healing_stack.orders[0].stop()
        faulty = healing_stack.order_process(
            "order-faulty", module="tests.e2e.crashing_service"
        ).start()
        faulty.wait_healthy()
        created = await client.post(
            f"{faulty.url}/orders", json={"product_id": product["id"], "total_price": 4}
        )
        assert created.status_code == 201
        assert faulty.process is not None and faulty.process.wait(timeout=15) == 70
        # ...and whose event is then lost for good.
        assert await lose_unsent_order_events(healing_stack.sandbox.database_url) == 1
        state = await settlement(healing_stack.sandbox.database_url, None)
        assert state.pending == 1

        restarted = healing_stack.order_process("order-restarted").start()
        healing_stack.orders.append(restarted)
        restarted.wait_healthy()
        settled = await wait_terminal(client, restarted.url, created.json()["id"], timeout=30)
        assert settled["status"] == "confirmed"
        after = (await client.get(f"{healing_stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 2
    assert (
        await stock_violations(
            healing_stack.sandbox.database_url, {product["id"]: 3}, [settled["id"]]
        )
        == []
    )

"""A crash after the commit and before the publish loses nothing: the outbox row waits,
and the restarted service publishes it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness.invariants import settlement, stock_violations
from harness.processes import ServiceProcess
from harness.sandbox import Sandbox
from harness.stack import Stack

from .crashing_service import EXIT_CODE
from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e

CRASHING = "tests.e2e.crashing_service"  # dies at its first publish, after the commit


@pytest.fixture
def crash_stack(make_sandbox: Callable[[str], Sandbox], tmp_path: Path) -> Iterator[Stack]:
    running = Stack(make_sandbox("crash"), tmp_path).start()
    try:
        yield running
    finally:
        running.stop()


def _exits_by_fault(process: ServiceProcess) -> None:
    assert process.process is not None
    assert process.process.wait(timeout=15) == EXIT_CODE, process.tail()


async def test_order_service_crash_before_publish_still_settles_after_restart(
    crash_stack: Stack,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, crash_stack.product_url, "Crashy", 4, 3)
        crash_stack.orders[0].stop()
        faulty = crash_stack.order_process("order-faulty", module=CRASHING).start()
        faulty.wait_healthy()
        created = await client.post(
            f"{faulty.url}/orders", json={"product_id": product["id"], "total_price": 4}
        )
        assert created.status_code == 201
        _exits_by_fault(faulty)
        state = await settlement(crash_stack.sandbox.database_url, None)
        assert state.pending == 1 and state.unsent_events >= 1  # committed, never published

        restarted = crash_stack.order_process("order-restarted").start()
        crash_stack.orders.append(restarted)
        restarted.wait_healthy()
        settled = await wait_terminal(client, restarted.url, created.json()["id"])
        assert settled["status"] == "confirmed"
    assert (
        await stock_violations(
            crash_stack.sandbox.database_url, {product["id"]: 3}, [settled["id"]]
        )
        == []
    )


async def test_product_service_crash_before_publish_still_answers_after_restart(
    crash_stack: Stack,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, crash_stack.product_url, "Crashy too", 4, 3)
        # Let product_created go out before the product service is replaced by a faulty one.
        await wait_until_no_unsent(crash_stack)
        crash_stack.products[0].stop()
        faulty = ServiceProcess(
            "product-faulty",
            ["serve", "product"],
            crash_stack.products[0].env,
            crash_stack.log_dir,
            port=crash_stack.products[0].port,
            module=CRASHING,
        ).start()
        faulty.wait_healthy()
        created = await client.post(
            f"{crash_stack.order_url}/orders", json={"product_id": product["id"], "total_price": 4}
        )
        assert created.status_code == 201
        _exits_by_fault(faulty)  # stock taken and answer committed, answer never published
        assert (await client.get(f"{crash_stack.order_url}/orders/{created.json()['id']}")).json()[
            "status"
        ] == "pending"

        crash_stack.products[0].start()
        crash_stack.products[0].wait_healthy()
        settled = await wait_terminal(client, crash_stack.order_url, created.json()["id"])
        assert settled["status"] == "confirmed"
        after = (await client.get(f"{crash_stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 2
    assert (
        await stock_violations(
            crash_stack.sandbox.database_url, {product["id"]: 3}, [settled["id"]]
        )
        == []
    )


async def wait_until_no_unsent(stack: Stack) -> None:
    import asyncio

    for _ in range(100):
        if (await settlement(stack.sandbox.database_url, None)).unsent_events == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("outbox did not drain")

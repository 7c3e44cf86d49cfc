"""One order's log lines, found across both services' log files by its request id, on
the real stack (separate processes, MariaDB, RabbitMQ, Redis; each writes its log file)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from harness.sandbox import Sandbox
from harness.stack import Stack

from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def logged_stack(
    make_sandbox: Callable[..., Sandbox], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    sandbox = make_sandbox("reqid")
    running = Stack(
        sandbox, tmp_path_factory.mktemp("logs"), extra_env={"ACCESS_LOG": "true"}
    ).start()
    try:
        yield running
    finally:
        running.stop()


def lines_with(path: Path, request_id: str) -> list[dict[str, object]]:
    found = []
    for raw in path.read_text(errors="replace").splitlines():
        if request_id not in raw or not raw.startswith("{"):
            continue
        found.append(orjson.loads(raw))
    return found


async def test_one_orders_log_lines_are_found_in_both_services_by_its_request_id(
    logged_stack: Stack,
) -> None:
    stack = logged_stack
    request_id = f"e2e-{uuid.uuid4()}"
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Traced", 100, 5)
        response = await client.post(
            f"{stack.order_url}/orders",
            json={"product_id": product["id"], "total_price": 100},
            headers={"X-Request-ID": request_id},
        )
        assert response.status_code == 201, response.text
        assert response.headers["X-Request-ID"] == request_id
        order_id = response.json()["id"]
        assert (await wait_terminal(client, stack.order_url, order_id))["status"] == "confirmed"

    order_log, product_log = stack.orders[0].log_path, stack.products[0].log_path
    deadline = time.monotonic() + 10
    while True:
        in_orders, in_products = (
            lines_with(order_log, request_id),
            lines_with(product_log, request_id),
        )
        events = {line["event"] for line in in_orders + in_products}
        if {"order settled", "order answered"} <= events or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)

    print(f"\nthe log lines of order {order_id}, request {request_id}:")
    for name, lines in (("order-0", in_orders), ("product-0", in_products)):
        for line in lines:
            print(f"  {name}: {orjson.dumps(line).decode()}")

    access = [line for line in in_orders if line["event"] == "request"]
    assert [(a["method"], a["route"], a["status"]) for a in access] == [("POST", "/orders", 201)]
    assert access[0]["request_id"] == request_id
    [answered] = [line for line in in_products if line["event"] == "order answered"]
    assert answered["request_id"] == request_id and answered["order_id"] == order_id
    assert answered["answer"] == "order.qty_confirmed"
    [settled] = [line for line in in_orders if line["event"] == "order settled"]
    assert settled["request_id"] == request_id and settled["order_id"] == order_id
    assert settled["status"] == "confirmed"

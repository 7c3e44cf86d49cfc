"""A broker lost after the replicas reached it: they stay ready (a balancer keeps them in
rotation) and keep taking orders, whose events wait in the outbox; once the broker takes
them back, every order settles. The broker is taken away from this test's vhost only
(its permissions cleared and its connections closed), never from the machine."""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
import pytest

from harness.stack import Stack

from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


def _close_vhost_connections(vhost: str) -> None:
    listing = _rabbitmqctl("list_connections", "pid", "vhost", "--no-table-headers")
    for line in listing.splitlines():
        pid, _, on = line.partition("\t")
        if on.strip() == vhost:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid.strip(), "test: broker lost"],
                capture_output=True,
                timeout=60,
            )


async def test_replicas_stay_ready_and_take_orders_while_their_broker_is_gone(
    stack: Stack,
) -> None:
    vhost, user = stack.sandbox.name, stack.sandbox.amqp_user
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Outage", 10, 20)
        urls = [p.url for p in [*stack.products, *stack.orders]]
        before = [await client.get(f"{u}/readyz") for u in urls]
        assert [r.status_code for r in before] == [200] * len(urls)
        _rabbitmqctl("clear_permissions", "-p", vhost, user)
        try:
            _close_vhost_connections(vhost)
            deadline = time.monotonic() + 15
            while (await client.get(f"{stack.order_url}/health")).json()["services"][
                "rabbitmq"
            ] != "down":
                assert time.monotonic() < deadline, "the broker never looked gone"
                await asyncio.sleep(0.2)
            ready = [await client.get(f"{u}/readyz") for u in urls]
            placed = [
                await client.post(
                    f"{stack.order_url}/orders",
                    json={"product_id": product["id"], "total_price": 10},
                )
                for _ in range(5)
            ]
        finally:
            _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        assert [r.status_code for r in ready] == [200] * len(urls), [r.text for r in ready]
        assert {r.json()["services"]["rabbitmq"] for r in ready} == {"down"}
        assert [p.status_code for p in placed] == [201] * 5
        settled = [await wait_terminal(client, stack.order_url, p.json()["id"], 60) for p in placed]
        assert [s["status"] for s in settled] == ["confirmed"] * 5

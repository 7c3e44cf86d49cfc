"""The MySQL 8 path (no ``INSERT … RETURNING``: one INSERT per order, each id read from its
own statement) on the real stack: forced with DB_INSERT_RETURNING=off on MariaDB, services
as separate processes on RabbitMQ and Redis. The same workflows as the default path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness.sandbox import Sandbox
from harness.stack import Stack

from .workflows import complete_order_flow, concurrent_orders_never_oversell, idempotency_flow

pytestmark = pytest.mark.e2e

PORTABLE = {"DB_INSERT_RETURNING": "off"}


@pytest.fixture(scope="module")
def portable(
    make_sandbox: Callable[[str], Sandbox], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    sandbox = make_sandbox("mysql8")
    running = Stack(
        sandbox, tmp_path_factory.mktemp("logs"), product_replicas=2, extra_env=PORTABLE
    ).start()
    try:
        yield running
    finally:
        running.stop()


def test_the_order_service_runs_with_the_portable_path_forced(portable: Stack) -> None:
    for process in portable.orders:
        assert process.process is not None
        environ = Path(f"/proc/{process.process.pid}/environ").read_bytes().split(b"\0")
        assert b"DB_INSERT_RETURNING=off" in environ


async def test_complete_order_flow(portable: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await complete_order_flow(client, portable.product_url, portable.order_url)


async def test_concurrent_orders_on_one_product_never_oversell(portable: Stack) -> None:
    # Enough at once that the order service writes them in multi-order group commits.
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        await concurrent_orders_never_oversell(
            client,
            portable.product_url,
            portable.order_url,
            portable.sandbox.database_url,
            stock=25,
            demand=120,
        )


async def test_idempotency_keys(portable: Stack) -> None:
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64)) as client:
        await idempotency_flow(client, portable.product_url, portable.order_url)

"""The seed's workflows and the order lifecycle on PostgreSQL: the same ``stack`` as the
other modules (two product replicas and an order service as separate processes, RabbitMQ,
Redis), its database on the PostgreSQL server. The same workflow functions as on MariaDB,
so both databases are held to one behaviour: the complete flow, errors, concurrent orders
that must not oversell, idempotency keys, order queries, quantities and cancellations,
and the stock ledger afterwards."""

from __future__ import annotations

import httpx
import pytest

from harness.invariants import ledger_violations
from harness.stack import Stack

from .cancel_workflows import (
    cancel_at_the_stock_limit_flow,
    cancel_confirmed_flow,
    cancel_pending_flow,
    failed_order_cannot_be_cancelled,
    quantity_flow,
)
from .workflows import (
    complete_order_flow,
    concurrent_orders_never_oversell,
    error_handling_flow,
    idempotency_flow,
    order_queries_flow,
    wait_quiet,
)

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("stack", ["postgresql"], indirect=True)]


def test_the_services_run_on_postgresql(stack: Stack) -> None:
    assert stack.sandbox.database_url.startswith("postgresql://")
    assert stack.sandbox.database == "postgresql"


async def test_complete_order_flow(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await complete_order_flow(client, stack.product_url, stack.order_url)


async def test_error_handling_flow(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await error_handling_flow(client, stack.product_url, stack.order_url)


async def test_concurrent_orders_on_two_product_replicas_never_oversell(stack: Stack) -> None:
    # Enough at once for multi-order group commits (INSERT … RETURNING) and for both
    # product replicas' consumers to take stock of one product concurrently.
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        await concurrent_orders_never_oversell(
            client,
            stack.product_url,
            stack.order_url,
            stack.sandbox.database_url,
            stock=30,
            demand=150,
        )


async def test_idempotency_keys(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64)) as client:
        await idempotency_flow(client, stack.product_url, stack.order_url)


async def test_order_queries_follow_the_links(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await order_queries_flow(client, stack.product_url, stack.order_url)


async def test_orders_of_several_units_settle_and_stock_drops_by_them(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await quantity_flow(client, stack.product_url, stack.order_url)


async def test_cancel_of_a_confirmed_order_restocks_exactly_once(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cancel_confirmed_flow(client, stack.product_url, stack.order_url)
    await wait_quiet(stack)


async def test_a_cancel_at_the_stock_limit_gives_its_units_back(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cancel_at_the_stock_limit_flow(client, stack.product_url, stack.order_url)


async def test_cancel_of_pending_orders(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await cancel_pending_flow(
            client, stack.product_url, stack.order_url, lambda _: wait_quiet(stack)
        )


async def test_a_failed_order_cannot_be_cancelled(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await failed_order_cannot_be_cancelled(client, stack.product_url, stack.order_url)


async def test_the_stock_ledger_balances_for_every_product_afterwards(stack: Stack) -> None:
    await wait_quiet(stack)
    assert await ledger_violations(stack.sandbox.database_url) == []

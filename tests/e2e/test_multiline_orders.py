"""Orders of several lines on the real stack (two product replicas and an order service as
separate processes, RabbitMQ, Redis), on MariaDB and on PostgreSQL: the flows of
multiline_workflows.py, one stack per database for the whole module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from harness.stack import Stack

from . import multiline_workflows as flows
from .workflows import wait_quiet

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("stack", ["mariadb", "postgresql"], indirect=True),
]

Flow = Callable[[httpx.AsyncClient, str, str, str, flows.Quiet], Awaitable[None]]


async def _run(stack: Stack, flow: Flow) -> None:
    async def quiet() -> None:
        await wait_quiet(stack)

    async with httpx.AsyncClient(timeout=10) as client:
        await flow(client, stack.product_url, stack.order_url, stack.sandbox.database_url, quiet)


async def test_a_multi_line_order_is_confirmed_with_priced_lines(stack: Stack) -> None:
    await _run(stack, flows.priced_and_confirmed_flow)


async def test_an_order_without_a_total_is_priced_by_the_catalog(stack: Stack) -> None:
    await _run(stack, flows.unpriced_order_flow)


async def test_one_short_line_fails_the_whole_order(stack: Stack) -> None:
    await _run(stack, flows.short_line_fails_all_flow)


async def test_a_wrong_total_fails_with_price_changed_taking_nothing(stack: Stack) -> None:
    await _run(stack, flows.wrong_total_flow)


async def test_a_cancel_gives_back_every_line_once(stack: Stack) -> None:
    await _run(stack, flows.cancel_restores_every_line_once_flow)


async def test_queries_by_product_find_multi_line_orders(stack: Stack) -> None:
    await _run(stack, flows.queries_by_product_flow)


async def test_concurrent_orders_in_opposite_line_order(stack: Stack) -> None:
    await _run(stack, flows.concurrent_opposite_orders_flow)


async def test_idempotency_keys_with_items(stack: Stack) -> None:
    await _run(stack, flows.idempotent_items_flow)


async def test_an_order_of_a_hundred_lines(stack: Stack) -> None:
    await _run(stack, flows.hundred_lines_flow)

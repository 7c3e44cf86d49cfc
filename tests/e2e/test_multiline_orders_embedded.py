"""Orders of several lines on the embedded default (`orderstack dev`: SQLite, the durable
local bus, one process): the flows of multiline_workflows.py, and ORDER_PRICE_CHECK=off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.invariants import settlement, unconsumed_events
from harness.processes import EmbeddedDev

from . import multiline_workflows as flows
from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Site:
    product_url: str
    order_url: str
    database_url: str


@contextmanager
def _start(workdir: Path, env: dict[str, str] | None = None) -> Iterator[Site]:
    site = EmbeddedDev(workdir, env=env or {})
    process = site.process().start()
    try:
        process.wait_healthy()
        yield Site(site.product_url, site.order_url, f"sqlite:///{workdir / 'orderstack.db'}")
    finally:
        process.stop()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with _start(tmp_path_factory.mktemp("multiline")) as site:
        yield site


async def _quiet(database_url: str) -> None:
    """No event unsent in either outbox, none sent and not consumed (bounded)."""
    deadline = time.monotonic() + 20
    while True:
        unsent = (await settlement(database_url, None)).unsent_events
        unconsumed = await unconsumed_events(database_url)
        if unsent == 0 and unconsumed == 0:
            return
        assert time.monotonic() < deadline, f"{unsent} unsent, {unconsumed} not consumed"
        await asyncio.sleep(0.05)


Flow = Callable[[httpx.AsyncClient, str, str, str, flows.Quiet], Awaitable[None]]


async def _run(site: Site, flow: Flow) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await flow(
            client,
            site.product_url,
            site.order_url,
            site.database_url,
            lambda: _quiet(site.database_url),
        )


async def test_a_multi_line_order_is_confirmed_with_priced_lines_embedded(embedded: Site) -> None:
    await _run(embedded, flows.priced_and_confirmed_flow)


async def test_an_order_without_a_total_is_priced_by_the_catalog_embedded(embedded: Site) -> None:
    await _run(embedded, flows.unpriced_order_flow)


async def test_one_short_line_fails_the_whole_order_embedded(embedded: Site) -> None:
    await _run(embedded, flows.short_line_fails_all_flow)


async def test_a_wrong_total_fails_with_price_changed_taking_nothing_embedded(
    embedded: Site,
) -> None:
    await _run(embedded, flows.wrong_total_flow)


async def test_a_cancel_gives_back_every_line_once_embedded(embedded: Site) -> None:
    await _run(embedded, flows.cancel_restores_every_line_once_flow)


async def test_queries_by_product_find_multi_line_orders_embedded(embedded: Site) -> None:
    await _run(embedded, flows.queries_by_product_flow)


async def test_concurrent_orders_in_opposite_line_order_embedded(embedded: Site) -> None:
    await _run(embedded, flows.concurrent_opposite_orders_flow)


async def test_with_the_price_check_off_the_client_total_is_recorded_as_sent(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """ORDER_PRICE_CHECK=off: a total that is not the catalog's confirms and stays as sent;
    the lines are priced beside it."""
    with _start(tmp_path_factory.mktemp("price-off"), {"ORDER_PRICE_CHECK": "off"}) as site:
        async with httpx.AsyncClient(timeout=10) as client:
            a = await create_product(client, site.product_url, "Off A", 2.5, 5)
            b = await create_product(client, site.product_url, "Off B", 4, 5)
            lines = [{"product_id": a["id"], "quantity": 2}, {"product_id": b["id"]}]
            response = await client.post(
                f"{site.order_url}/orders", json={"items": lines, "total_price": 1}
            )
            assert response.status_code == 201, response.text
            body = await wait_terminal(client, site.order_url, response.json()["id"])
            assert body["status"] == "confirmed", body
            assert body["total_price"] == 1
            assert [(i["unit_price"], i["line_total"]) for i in body["items"]] == [(2.5, 5), (4, 4)]
            seed = await client.post(
                f"{site.order_url}/orders", json={"product_id": a["id"], "total_price": 2999.99}
            )
            body = await wait_terminal(client, site.order_url, seed.json()["id"])
            assert (body["status"], body["total_price"]) == ("confirmed", 2999.99)
            assert body["items"][0]["unit_price"] == 2.5


async def test_idempotency_keys_with_items_embedded(embedded: Site) -> None:
    await _run(embedded, flows.idempotent_items_flow)


async def test_an_order_of_a_hundred_lines_embedded(embedded: Site) -> None:
    await _run(embedded, flows.hundred_lines_flow)

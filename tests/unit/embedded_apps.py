"""Both services' apps in process on the embedded adapters (SQLite file, in-process bus
and cache), started with their lifespans, with an HTTP client each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from orderstack.bootstrap import order_app, product_app
from orderstack.infrastructure import Infrastructure
from tests.unit.test_metrics import client, settings_for


@dataclass(frozen=True)
class RunningApps:
    infra: Infrastructure
    products: FastAPI
    orders: FastAPI
    product_http: httpx.AsyncClient
    order_http: httpx.AsyncClient


@asynccontextmanager
async def running_apps(tmp_path: Path, **settings: object) -> AsyncIterator[RunningApps]:
    """The two apps with ``settings`` over the test defaults (``settings_for``)."""
    config = settings_for(tmp_path, **settings)
    infra = Infrastructure.from_settings(config, both_services=True)
    products, orders = product_app(config, infra), order_app(config, infra)
    try:
        async with AsyncExitStack() as stack:
            for app in (products, orders):
                await stack.enter_async_context(app.router.lifespan_context(app))
            product_http = await stack.enter_async_context(client(products))
            order_http = await stack.enter_async_context(client(orders))
            yield RunningApps(infra, products, orders, product_http, order_http)
    finally:
        await infra.close()


async def one_order_settled(apps: RunningApps) -> None:
    """A product made and one order placed on it, waited for until the order service's
    /metrics counts it settled (confirmed)."""
    created = await apps.product_http.post(
        "/products", json={"name": "Widget", "price": 5, "qty": 2}
    )
    placed = await apps.order_http.post("/orders", json={"product_id": created.json()["id"]})
    assert placed.status_code == 201, placed.text
    for _ in range(250):
        text = (await apps.order_http.get("/metrics")).text
        if 'order_settle_duration_seconds_count{status="confirmed"} 1.0' in text:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the order was not counted settled within 5 s")


async def sample_names(http: httpx.AsyncClient) -> set[str]:
    """The names of every sample an app's /metrics shows."""
    scraped = (await http.get("/metrics")).text
    return {
        sample.name
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
    }

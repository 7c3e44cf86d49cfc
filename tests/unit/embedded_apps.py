"""Both services' apps in process on the embedded adapters (SQLite file, in-process bus
and cache), started with their lifespans, with an HTTP client each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

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

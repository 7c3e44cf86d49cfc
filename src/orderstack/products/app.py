"""The product service's app factory: where its adapters are chosen and wired."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from fastapi import FastAPI

from orderstack.cache.port import CachedProduct
from orderstack.config import Settings
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.outbox import OutboxRelay
from orderstack.messaging.retention import pruner_from_settings
from orderstack.messaging.runtime import MessagingRuntime
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.products.api import product_router
from orderstack.products.cache_repair import CacheRepair
from orderstack.products.handlers import OrderCreatedHandler
from orderstack.products.repository import ProductUnitOfWork, SqlProductRepository, inbox, outbox
from orderstack.products.service import ProductService
from orderstack.storage import migrate
from orderstack.storage.engine import ping
from orderstack.web.app import base_app
from orderstack.web.health import HealthCheck, Probe, add_health_routes


def create_app(settings: Settings, infra: Infrastructure | None = None) -> FastAPI:
    """Build the product service. Without ``infra`` it runs alone on the configured servers
    (and closes them on shutdown); with it, on adapters the caller owns."""
    owned = infra is None
    infra = infra or Infrastructure.for_service(settings)
    relay = OutboxRelay(
        infra.engine,
        outbox,
        infra.bus,
        batch_size=settings.OUTBOX_BATCH_SIZE,
        workers=settings.OUTBOX_RELAY_WORKERS,
        linger=settings.BATCH_LINGER_SECONDS,
        crash_before_publish=settings.FAULT_CRASH_BEFORE_PUBLISH,
    )

    def unit_of_work() -> ProductUnitOfWork:
        return ProductUnitOfWork(infra.engine, relay.notify)

    service = ProductService(unit_of_work, infra.cache)
    consumer = EventConsumer(
        infra.bus,
        PRODUCT_SERVICE_QUEUE,
        unit_of_work,
        OrderCreatedHandler(service),
        prefetch=settings.CONSUMER_PREFETCH,
        batch_size=settings.CONSUMER_BATCH_SIZE,
        linger=settings.BATCH_LINGER_SECONDS,
    )
    messaging = MessagingRuntime(infra.bus, relay, consumer)
    pruner = pruner_from_settings(infra.engine, outbox, inbox, settings)

    async def changed_products(since: datetime, after_id: int, limit: int) -> list[CachedProduct]:
        async with infra.engine.connect() as conn:
            return await SqlProductRepository(conn).changed_since(since, after_id, limit)

    cache_repair = CacheRepair(
        changed_products,
        infra.cache,
        ttl=timedelta(seconds=settings.CACHE_TTL_SECONDS),
        interval=settings.CACHE_REPAIR_INTERVAL_SECONDS,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await migrate.upgrade_when_reachable(infra.engine, "products")
        await messaging.start()
        pruner.start()
        cache_repair.start()
        try:
            yield
        finally:
            await cache_repair.stop()
            await pruner.stop()
            await messaging.stop()
            if owned:
                await infra.close()

    app = base_app("product service", "nest", settings, lifespan)
    app.state.products = service
    app.include_router(product_router())

    probes: dict[str, Probe] = {
        "database": lambda: ping(infra.engine),
        "redis": infra.cache.is_up,
        "rabbitmq": infra.bus.is_up,
    }
    add_health_routes(
        app,
        HealthCheck(probes, settings.HEALTH_TIMEOUT_SECONDS, ttl=settings.HEALTH_CACHE_SECONDS),
        ready_on=("database", "rabbitmq"),
    )

    return app

"""The product service's app factory: where its adapters are chosen and wired."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response

from orderstack.config import Settings
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.outbox import OutboxRelay
from orderstack.messaging.retention import pruner_from_settings
from orderstack.messaging.runtime import MessagingRuntime
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.products.api import product_router
from orderstack.products.handlers import OrderCreatedHandler
from orderstack.products.repository import ProductUnitOfWork, inbox, outbox
from orderstack.products.service import ProductService
from orderstack.storage import migrate
from orderstack.storage.engine import ping
from orderstack.web.app import base_app
from orderstack.web.health import HEALTH_RESPONSES, HealthBody, health_response


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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await migrate.upgrade(infra.engine, "products")
        await messaging.start()
        pruner.start()
        try:
            yield
        finally:
            await pruner.stop()
            await messaging.stop()
            if owned:
                await infra.close()

    app = base_app("product service", "nest", settings, lifespan)
    app.state.products = service
    app.state.messaging = messaging
    app.include_router(product_router())

    @app.get("/health", tags=["health"], response_model=HealthBody, responses=HEALTH_RESPONSES)
    async def health() -> Response:
        return await health_response(
            {
                "database": lambda: ping(infra.engine),
                "redis": infra.cache.is_up,
                "rabbitmq": infra.bus.is_up,
            },
            settings.HEALTH_TIMEOUT_SECONDS,
        )

    return app

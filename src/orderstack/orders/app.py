"""The order service's app factory: where its adapters are chosen and wired."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from orderstack.config import Settings
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.outbox import OutboxRelay
from orderstack.messaging.retention import pruner_from_settings
from orderstack.messaging.runtime import MessagingRuntime
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE
from orderstack.orders.api import admin_router, order_router
from orderstack.orders.catalog import HttpProductCatalog
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.repository import OrderUnitOfWork, inbox, outbox
from orderstack.orders.service import OrderService
from orderstack.orders.sweeper import PendingOrderSweeper
from orderstack.storage import migrate
from orderstack.storage.engine import ping
from orderstack.web.admin import admin_guard
from orderstack.web.app import base_app
from orderstack.web.health import HealthCheck, Probe, add_health_routes


def create_app(settings: Settings, infra: Infrastructure | None = None) -> FastAPI:
    """Build the order service. Without ``infra`` it runs alone on the configured servers
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

    def unit_of_work() -> OrderUnitOfWork:
        return OrderUnitOfWork(
            infra.engine, relay.notify, insert_returning=settings.insert_returning
        )

    catalog = HttpProductCatalog(
        infra.cache,
        settings.product_service_urls,
        timeout=settings.PRODUCT_CLIENT_TIMEOUT_SECONDS,
        retries=settings.PRODUCT_CLIENT_RETRIES,
        retry_budget=settings.PRODUCT_CLIENT_RETRY_BUDGET_SECONDS,
    )
    service = OrderService(unit_of_work, catalog, write_batch=settings.ORDER_WRITE_BATCH)
    consumer = EventConsumer(
        infra.bus,
        ORDER_SERVICE_QUEUE,
        unit_of_work,
        OrderEventsHandler(service),
        prefetch=settings.CONSUMER_PREFETCH,
        batch_size=settings.CONSUMER_BATCH_SIZE,
        linger=settings.BATCH_LINGER_SECONDS,
    )
    messaging = MessagingRuntime(infra.bus, relay, consumer)
    pruner = pruner_from_settings(infra.engine, outbox, inbox, settings)
    sweeper = PendingOrderSweeper(
        service,
        interval=settings.ORDER_SWEEP_INTERVAL_SECONDS,
        pending_for=settings.ORDER_PENDING_RESEND_SECONDS,
        batch=settings.ORDER_SWEEP_BATCH,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await migrate.upgrade_when_reachable(infra.engine, "orders")
        await messaging.start()
        pruner.start()
        sweeper.start()
        try:
            yield
        finally:
            await sweeper.stop()
            await pruner.stop()
            await messaging.stop()
            await catalog.close()
            if owned:
                await infra.close()

    app = base_app("order service", "seed", settings, lifespan)
    app.state.orders = service
    app.include_router(order_router())
    app.include_router(admin_router(admin_guard(settings.ADMIN_TOKEN)))

    probes: dict[str, Probe] = {
        "database": lambda: ping(infra.engine),
        "redis": infra.cache.is_up,
        "product_service": catalog.is_up,
        "rabbitmq": infra.bus.is_up,
    }
    add_health_routes(
        app,
        HealthCheck(probes, settings.HEALTH_TIMEOUT_SECONDS, ttl=settings.HEALTH_CACHE_SECONDS),
        ready_on=("database", "rabbitmq"),
    )

    return app

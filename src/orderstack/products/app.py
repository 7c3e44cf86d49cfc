"""The product service: its tables, queue, handlers, routes and probes (assembly.py wires
them), and the repair that keeps the cache true to its rows."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import FastAPI

from orderstack.assembly import Assembly, ServiceSpec
from orderstack.cache.port import CachedProduct
from orderstack.config import Settings
from orderstack.events import Service
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.products.api import CachedProductGet, ProductCreatePath, product_router
from orderstack.products.cache_repair import CacheRepair
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.repository import (
    ProductUnitOfWork,
    SqlProductRepository,
    inbox,
    outbox,
    products,
)
from orderstack.products.service import ProductService

PRODUCT_SERVICE = ServiceSpec(
    "products", "product service", "nest", outbox, inbox, PRODUCT_SERVICE_QUEUE, products
)


def create_app(settings: Settings, infra: Infrastructure | None = None) -> FastAPI:
    """Build the product service; ``infra``: see ``Assembly``."""
    parts = Assembly(PRODUCT_SERVICE, settings, infra)
    engine, cache, relay = parts.infra.engine, parts.infra.cache, parts.relay

    def unit_of_work() -> ProductUnitOfWork:
        return ProductUnitOfWork(engine, relay.notify, insert_returning=settings.insert_returning)

    async def changed_products(
        since: datetime | None, after_id: int, limit: int
    ) -> list[CachedProduct]:
        async with engine.connect() as conn:
            return await SqlProductRepository(conn).changed_since(since, after_id, limit)

    # The epoch read is shared with an order service in this process (``known_epoch``).
    service = ProductService(unit_of_work, cache, known_epoch=parts.infra.known_epoch)
    parts.consume(unit_of_work, OrderStockHandler(service))
    parts.describe_events(Service.PRODUCTS)
    parts.count(
        "stock_reservations",
        "Stock reservations recorded (confirmed, failed) or cancelled by this process",
        "outcome",
        service.reservations,
    )
    parts.run_in_background(
        CacheRepair(
            changed_products,
            cache,
            service.epoch,
            ttl=timedelta(seconds=settings.CACHE_TTL_SECONDS),
            interval=settings.CACHE_REPAIR_INTERVAL_SECONDS,
        )
    )
    return parts.app(
        [product_router()],
        {"redis": cache.is_up},
        state={"products": service},
        hot_paths=[
            CachedProductGet(service),
            ProductCreatePath(service, max_body=settings.MAX_BODY_BYTES),
        ],
    )

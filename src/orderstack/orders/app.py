"""The order service: its tables, queue, handlers, routes and probes (assembly.py wires them)."""

from __future__ import annotations

from fastapi import FastAPI

from orderstack.admission import SettleDelayShedder
from orderstack.assembly import Assembly, ServiceSpec
from orderstack.config import Settings
from orderstack.events import Service
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE
from orderstack.orders.api import OrderCreatePath, admin_router, order_router
from orderstack.orders.catalog import HttpProductCatalog
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.page import ProductRelay, page_router
from orderstack.orders.repository import OrderUnitOfWork, inbox, orders, outbox
from orderstack.orders.service import OrderService
from orderstack.orders.sweeper import PendingOrderSweeper
from orderstack.web.admin import admin_guard
from orderstack.web.limits import AdmissionGate

ORDER_SERVICE = ServiceSpec(
    "orders", "order service", "seed", outbox, inbox, ORDER_SERVICE_QUEUE, orders
)


def create_app(settings: Settings, infra: Infrastructure | None = None) -> FastAPI:
    """Build the order service; ``infra``: see ``Assembly``."""
    parts = Assembly(ORDER_SERVICE, settings, infra)
    engine, relay = parts.infra.engine, parts.relay

    def unit_of_work() -> OrderUnitOfWork:
        return OrderUnitOfWork(engine, relay.notify, insert_returning=settings.insert_returning)

    catalog = HttpProductCatalog(
        parts.infra.cache,
        settings.product_service_urls,
        timeout=settings.PRODUCT_CLIENT_TIMEOUT_SECONDS,
        retries=settings.PRODUCT_CLIENT_RETRIES,
        retry_budget=settings.PRODUCT_CLIENT_RETRY_BUDGET_SECONDS,
        known_epoch=parts.infra.known_epoch,
    )
    shedder = None
    if settings.ORDER_SETTLE_TARGET_SECONDS > 0:
        shedder = SettleDelayShedder(target=settings.ORDER_SETTLE_TARGET_SECONDS)
    service = OrderService(
        unit_of_work, catalog, write_batch=settings.ORDER_WRITE_BATCH, shedder=shedder
    )
    parts.consume(unit_of_work, OrderEventsHandler(service))
    parts.describe_events(Service.ORDERS)
    parts.run_in_background(
        PendingOrderSweeper(
            service,
            interval=settings.ORDER_SWEEP_INTERVAL_SECONDS,
            pending_for=settings.ORDER_PENDING_RESEND_SECONDS,
            batch=settings.ORDER_SWEEP_BATCH,
            max_wait=settings.ORDER_PENDING_RESEND_MAX_SECONDS,
        )
    )
    parts.close_on_stop(catalog.close)
    parts.count("orders", "Orders moved into each status here", "status", service.entered)
    page_relay = ProductRelay(settings.product_service_urls)  # the page's product calls
    parts.close_on_stop(page_relay.close)
    return parts.app(
        [order_router(), admin_router(admin_guard(settings.ADMIN_TOKEN)), page_router(page_relay)],
        {"redis": parts.infra.cache.is_up, "product_service": catalog.is_up},
        state={"orders": service},
        hot_paths=[OrderCreatePath(service, max_body=settings.MAX_BODY_BYTES)],
        gates=[AdmissionGate("POST", "/orders", shedder.admit, "orders are settling late")]
        if shedder is not None
        else [],
    )

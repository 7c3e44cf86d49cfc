"""How each process is put together: the composition root, read top to bottom.

- ``orderstack serve order|product`` (``serve_one``): one service alone on the configured
  servers; its app owns the adapters and closes them on shutdown.
- ``orderstack dev`` (``run_dev``): both services in one process on one set of adapters
  (the embedded default unless servers are configured), closed once both have stopped.
- ``orderstack cache warmup`` (``warm_cache``): the order service's product lookup, once.

Each service's app (``order_app``, ``product_app``) is built in the same steps: the
process's adapters as the service uses them and its outbox relay
(``assembly.service_adapters``), its unit of work, its use cases, what drives them (event
handler, routes, background work), then the app around them (``assembly.service_app``).
Nothing here runs at import; tests build the apps on adapters of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import httpx
import structlog
import uvloop
from fastapi import APIRouter, FastAPI
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.admission import SettleDelayShedder
from orderstack.assembly import Count, ServiceSpec, service_adapters, service_app
from orderstack.cache.port import CachedProduct
from orderstack.config import (
    DEV_ADMIN_TOKEN,
    LOCAL_HOSTS,
    SHUTDOWN_CLOSE_SECONDS,
    ConfigError,
    Settings,
)
from orderstack.events import Service
from orderstack.infrastructure import Infrastructure, cache_from_settings
from orderstack.messaging.consumer import EventHandler
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE
from orderstack.orders import repository as order_tables
from orderstack.orders.api import admin_router, order_fast_paths, order_router
from orderstack.orders.catalog import HttpProductCatalog
from orderstack.orders.domain import OrderStatus, PriceCheck, SettleOrder
from orderstack.orders.events_stream import HUB_STATE, order_events_router
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.page import ProductRelay, page_router
from orderstack.orders.repository import OrderUnitOfWork, SqlStatusEventLog, SqlWebhookStore
from orderstack.orders.service import SETTLE_BUCKETS, OrderService
from orderstack.orders.status_events import StatusEventHub
from orderstack.orders.sweeper import HoldExpirySweeper, PendingOrderSweeper
from orderstack.orders.webhooks import WebhookDispatcher
from orderstack.orders.webhooks_api import webhook_router
from orderstack.products import repository as product_tables
from orderstack.products.api import product_fast_paths, product_router
from orderstack.products.cache_repair import CacheRepair
from orderstack.products.drift import StockDriftGauge
from orderstack.products.handlers import OrderStockHandler, StockCommand
from orderstack.products.repository import ProductUnitOfWork, SqlProductRepository
from orderstack.products.service import ProductService
from orderstack.serving import serve, serve_together
from orderstack.web.auth import Access, Role, ServiceToken
from orderstack.web.limits import AdmissionGate
from orderstack.web.metrics import Histogram

log = structlog.get_logger(__name__)

ORDER_SERVICE = ServiceSpec(
    name="orders",
    title="order service",
    style="seed",
    outbox=order_tables.outbox,
    inbox=order_tables.inbox,
    queue=ORDER_SERVICE_QUEUE,
    writes=order_tables.orders,
    events=Service.ORDERS,
)
PRODUCT_SERVICE = ServiceSpec(
    name="products",
    title="product service",
    style="nest",
    outbox=product_tables.outbox,
    inbox=product_tables.inbox,
    queue=PRODUCT_SERVICE_QUEUE,
    writes=product_tables.products,
    events=Service.PRODUCTS,
)


def serve_one(settings: Settings, service: Literal["order", "product"]) -> None:
    """One service alone in this process, until SIGTERM or Ctrl-C. Raises ConfigError
    without RABBITMQ_URL, or with neither keys nor AUTH_MODE=off; CannotListen when its
    address cannot be listened on."""
    infra = Infrastructure.from_settings(settings, both_services=False)  # nothing connects yet
    if settings.auth_mode is None:
        raise ConfigError(
            "refusing to start without authentication: set AUTH_SIGNING_KEY or AUTH_JWKS_URL, "
            "or AUTH_MODE=off to serve without it (docs/security.md)"
        )
    if service == "order":
        app, port = order_app(settings, infra, owns_adapters=True), settings.ORDER_PORT
    else:
        app, port = product_app(settings, infra, owns_adapters=True), settings.PRODUCT_PORT
    serve(
        app,
        settings.HOST,
        settings.PORT or port,
        grace=settings.SHUTDOWN_GRACE_SECONDS,
        stop_bound=settings.shutdown_bound_seconds,
    )


def run_dev(settings: Settings) -> None:
    """Both services in this process, until SIGTERM or Ctrl-C. Raises CannotListen when
    one of their addresses cannot be listened on."""
    # This machine only, unless asked: a developer's browser is on it (web/hosts.py).
    settings = settings.model_copy(
        update={
            "HOST": settings.HOST if "HOST" in settings.model_fields_set else "127.0.0.1",
            "ALLOWED_HOSTS": settings.ALLOWED_HOSTS or LOCAL_HOSTS,
        }
    )
    settings = _dev_auth(settings)
    if Settings.model_fields["PRODUCT_SERVICE_URL"].default == settings.PRODUCT_SERVICE_URL:
        settings = settings.model_copy(
            update={"PRODUCT_SERVICE_URL": f"http://127.0.0.1:{settings.PRODUCT_PORT}"}
        )
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C outside serving (start-up)
        uvloop.run(_serve_both(settings))
    # The requests were drained and the lifespans have stopped the relays and consumers;
    # what they held waits on disk for the next start.
    log.info("orderstack dev stopped")


def _dev_auth(settings: Settings) -> Settings:
    """The embedded default keeps the seed's curl examples working: with no keys (and no
    AUTH_MODE) authentication is off, the local-development admin token opens /admin/*,
    and both are said at start with how to turn authentication on. With keys it is on,
    and no public admin token is made up."""
    if settings.auth_mode is None:
        settings = settings.model_copy(update={"AUTH_MODE": "off"})
    if settings.auth_mode == "jwt":
        log.info("authentication on (AUTH_MODE=jwt)", mint="orderstack token alice --role customer")
        return settings
    log.warning(
        "authentication off (AUTH_MODE=off): whoever reaches this process may do anything",
        listening_on=settings.HOST,
        turn_on="AUTH_SIGNING_KEY=<32 bytes or more> make run; orderstack token alice --role "
        "customer (docs/security.md)",
    )
    if settings.ADMIN_TOKEN is None:
        settings = settings.model_copy(update={"ADMIN_TOKEN": SecretStr(DEV_ADMIN_TOKEN)})
        log.warning(
            "ADMIN_TOKEN not set: using the local-development token",
            hint="curl -H 'Authorization: Bearer dev-admin-token' ...",
        )
    return settings


async def _serve_both(settings: Settings) -> None:
    infra = Infrastructure.from_settings(settings, both_services=True)
    products = product_app(settings, infra)
    orders = order_app(settings, infra)
    log.info(
        "orderstack dev",
        order_service=settings.ORDER_PORT,
        product_service=settings.PRODUCT_PORT,
        database=settings.database_url.get_backend_name(),
        bus=type(infra.bus).__name__,
        cache=type(infra.cache).__name__,
    )
    log.info(f"open {page_url(settings)} for the page that shows orders settling")
    try:
        await serve_together(
            [(products, settings.PRODUCT_PORT), (orders, settings.ORDER_PORT)],
            settings.HOST,
            grace=settings.SHUTDOWN_GRACE_SECONDS,
            # A stop stuck past its bound ends the process (exit 1): what was not done
            # waits on disk (outbox, local bus) for the next start.
            stop_bound=settings.shutdown_bound_seconds,
        )
    finally:
        try:
            await asyncio.wait_for(infra.close(), SHUTDOWN_CLOSE_SECONDS)
        except TimeoutError:
            log.warning(
                "closing the adapters took too long; exiting without", bound=SHUTDOWN_CLOSE_SECONDS
            )


def page_url(settings: Settings) -> str:
    """Where a browser on this machine finds the order service's page."""
    host = settings.HOST
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening on every address: loopback is one of them
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ORDER_PORT}/"


def order_app(settings: Settings, infra: Infrastructure, *, owns_adapters: bool = False) -> FastAPI:
    """The order service on ``infra``; with ``owns_adapters``, its shutdown closes them."""
    adapters = service_adapters(ORDER_SERVICE, settings, infra)
    engine, cache, relay = adapters.infra.engine, adapters.infra.cache, adapters.relay

    def unit_of_work() -> OrderUnitOfWork:
        return OrderUnitOfWork(engine, relay.notify, insert_returning=settings.insert_returning)

    catalog = HttpProductCatalog(
        cache,
        settings.product_service_urls,
        timeout=settings.PRODUCT_CLIENT_TIMEOUT_SECONDS,
        retries=settings.PRODUCT_CLIENT_RETRIES,
        retry_budget=settings.PRODUCT_CLIENT_RETRY_BUDGET_SECONDS,
        known_epoch=adapters.infra.known_epoch,
        authorization=_catalog_token(settings),
    )
    shedder = None
    if settings.ORDER_SETTLE_TARGET_SECONDS > 0:
        shedder = SettleDelayShedder(target=settings.ORDER_SETTLE_TARGET_SECONDS)
    # From an order's created_at to its settling (confirmed, failed), for the settle SLO.
    settle_delays = Histogram(
        "order_settle_duration_seconds",
        "From an order's created_at to its confirmed or failed commit, for orders accepted"
        " and settled by this process",
        "status",
        SETTLE_BUCKETS,
        (OrderStatus.CONFIRMED.value, OrderStatus.FAILED.value),
    )
    service = OrderService(
        unit_of_work,
        catalog,
        write_batch=settings.ORDER_WRITE_BATCH,
        shedder=shedder,
        price_check=PriceCheck(settings.ORDER_PRICE_CHECK),
        settle_observer=settle_delays.observe if settings.METRICS_ENABLED else None,
        hold_seconds=settings.ORDER_HOLD_SECONDS,
    )
    expiry = HoldExpirySweeper(
        service, interval=settings.ORDER_EXPIRY_INTERVAL_SECONDS, batch=settings.ORDER_SWEEP_BATCH
    )
    sweeper = PendingOrderSweeper(
        service,
        interval=settings.ORDER_SWEEP_INTERVAL_SECONDS,
        pending_for=settings.ORDER_PENDING_RESEND_SECONDS,
        batch=settings.ORDER_SWEEP_BATCH,
        max_wait=settings.ORDER_PENDING_RESEND_MAX_SECONDS,
    )
    page_relay = ProductRelay(settings.product_service_urls)  # the page's product calls
    access = Access.from_settings(settings)
    # Answers settle orders in the consumer's unit of work, which it commits (consumer.py).
    handler: EventHandler[OrderUnitOfWork, SettleOrder] = OrderEventsHandler(service)
    # The order-status streams' one reader of order_status_events (orders/status_events.py).
    status_events = StatusEventHub(
        SqlStatusEventLog(engine),
        poll=settings.ORDER_EVENTS_POLL_SECONDS,
        gap=settings.ORDER_EVENTS_GAP_SECONDS,
        max_streams=settings.ORDER_EVENT_STREAMS_MAX,
    )
    hooks = _webhooks(settings, engine, status_events, access)
    return service_app(
        settings,
        adapters,
        unit_of_work=unit_of_work,
        handler=handler,
        routers=[
            order_events_router(access, heartbeat=settings.ORDER_EVENTS_HEARTBEAT_SECONDS),
            order_router(access),
            admin_router(access),
            page_router(page_relay),
            *hooks.routers,
        ],
        probes={"redis": cache.is_up, "product_service": catalog.is_up},
        background=[sweeper, expiry, *hooks.dispatchers],
        closers=[catalog.close, page_relay.close, status_events.close, *hooks.closers],
        counts=[
            Count("orders", "Orders moved into each status here", "status", service.entered),
            Count(
                "order_status_streams",
                "Order-status streams opened here, and refused (ORDER_EVENT_STREAMS_MAX)",
                "outcome",
                status_events.stream_counts,
            ),
            Count(
                "order_status_event_ids",
                "Order status events this process's reader read, and ids it passed as missing",
                "outcome",
                status_events.id_counts,
            ),
            *hooks.counts,
        ],
        histograms=[settle_delays],
        batches={"intake": service.intake_batch_sizes},
        state={"orders": service, HUB_STATE: status_events},
        hot_paths=order_fast_paths(service, access, max_body=settings.MAX_BODY_BYTES),
        authentication=access.backend,
        gates=[AdmissionGate("POST", "/orders", shedder.admit, "orders are settling late")]
        if shedder is not None
        else [],
        owns_adapters=owns_adapters,
    )


@dataclass(frozen=True)
class _Webhooks:
    routers: list[APIRouter]
    dispatchers: list[WebhookDispatcher]
    closers: list[Callable[[], Awaitable[None]]]
    counts: list[Count]


def _webhooks(
    settings: Settings, engine: AsyncEngine, hub: StatusEventHub, access: Access
) -> _Webhooks:
    """With ORDER_WEBHOOKS: the admin routes and this replica's dispatcher (orders/webhooks.py)."""
    if not settings.ORDER_WEBHOOKS:
        return _Webhooks([], [], [], [])
    store = SqlWebhookStore(engine)
    client = httpx.AsyncClient(follow_redirects=False)  # a redirect could lead anywhere
    dispatcher = WebhookDispatcher(
        store,
        hub,
        client,
        poll=settings.ORDER_WEBHOOK_POLL_SECONDS,
        timeout=settings.ORDER_WEBHOOK_TIMEOUT_SECONDS,
        horizon=settings.ORDER_WEBHOOK_RETRY_HORIZON_SECONDS,
    )
    posts = Count(
        "order_webhook_posts",
        "Webhook POSTs this process made, acknowledged (2xx) or failed; dead: failed for the"
        " whole retry horizon (the hook paused)",
        "outcome",
        dispatcher.posts,
    )
    return _Webhooks(
        [webhook_router(access, store, SqlStatusEventLog(engine))],
        [dispatcher],
        [client.aclose],
        [posts],
    )


def _catalog_token(settings: Settings) -> ServiceToken | None:
    """What the order service sends to read a closed catalog (AUTH_PUBLIC_CATALOG=false): a
    staff token it signs itself. Raises ConfigError without a key to sign it with."""
    if settings.auth_mode != "jwt" or settings.AUTH_PUBLIC_CATALOG:
        return None
    if not settings.signing_keys:
        raise ConfigError(
            "AUTH_PUBLIC_CATALOG=false needs AUTH_SIGNING_KEY: the order service signs its "
            "own token to read the catalog"
        )
    return ServiceToken(settings, "order-service", Role.STAFF)


def product_app(
    settings: Settings, infra: Infrastructure, *, owns_adapters: bool = False
) -> FastAPI:
    """The product service on ``infra``, with the repair that keeps the cache true to its
    rows; with ``owns_adapters``, its shutdown closes them."""
    adapters = service_adapters(PRODUCT_SERVICE, settings, infra)
    engine, cache, relay = adapters.infra.engine, adapters.infra.cache, adapters.relay

    def unit_of_work() -> ProductUnitOfWork:
        return ProductUnitOfWork(engine, relay.notify, insert_returning=settings.insert_returning)

    async def changed_products(
        since: datetime | None, after_id: int, limit: int
    ) -> list[CachedProduct]:
        async with engine.connect() as conn:
            return await SqlProductRepository(conn).changed_since(since, after_id, limit)

    # The epoch read is shared with an order service in this process (``known_epoch``).
    service = ProductService(unit_of_work, cache, known_epoch=adapters.infra.known_epoch)
    repair = CacheRepair(
        changed_products,
        cache,
        service.epoch,
        ttl=timedelta(seconds=settings.CACHE_TTL_SECONDS),
        interval=settings.CACHE_REPAIR_INTERVAL_SECONDS,
    )
    # Stock is taken and given back in the consumer's unit of work, which it commits.
    handler: EventHandler[ProductUnitOfWork, StockCommand] = OrderStockHandler(service)
    access = Access.from_settings(settings)
    # stock_drift_units: measured in the background, never on a scrape (products/drift.py).
    drift: list[StockDriftGauge] = []
    if settings.STOCK_DRIFT_CHECK_SECONDS > 0 and settings.METRICS_ENABLED:
        drift.append(StockDriftGauge(engine, settings.STOCK_DRIFT_CHECK_SECONDS))
    return service_app(
        settings,
        adapters,
        unit_of_work=unit_of_work,
        handler=handler,
        routers=[product_router(access)],
        probes={"redis": cache.is_up},
        background=[repair, *drift],
        gauges=[gauge.families for gauge in drift],
        counts=[
            Count(
                "stock_reservations",
                "Stock reservations recorded (confirmed, failed) or cancelled by this process",
                "outcome",
                service.reservations,
            )
        ],
        state={"products": service},
        hot_paths=product_fast_paths(service, access, max_body=settings.MAX_BODY_BYTES),
        authentication=access.backend,
        owns_adapters=owns_adapters,
    )


async def warm_cache(settings: Settings, ids: list[int]) -> dict[str, list[int]]:
    """Cache the products ``ids`` through the order service's lookup (the product service
    answers the misses); the ids cached and the ids it does not know."""
    cache = cache_from_settings(settings)
    catalog = HttpProductCatalog(
        cache, settings.product_service_urls, timeout=settings.PRODUCT_CLIENT_TIMEOUT_SECONDS
    )
    try:
        cached, not_found = await catalog.warm(ids)
    finally:
        await catalog.close()
        await cache.close()
    return {"cached": cached, "not_found": not_found}

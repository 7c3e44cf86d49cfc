"""Both services in one process, sharing one set of adapters: the embedded default
(SQLite, in-process bus, in-process cache) unless servers are configured."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
import uvloop

from orderstack.config import DEV_ADMIN_TOKEN, SHUTDOWN_CLOSE_SECONDS, Settings
from orderstack.infrastructure import Infrastructure
from orderstack.orders.app import create_app as create_order_app
from orderstack.products.app import create_app as create_product_app
from orderstack.serving import serve_together

log = structlog.get_logger(__name__)


def run_dev(settings: Settings) -> None:
    if settings.ADMIN_TOKEN is None:
        settings = settings.model_copy(update={"ADMIN_TOKEN": DEV_ADMIN_TOKEN})
        log.warning(
            "ADMIN_TOKEN not set: using the local-development token",
            hint="curl -H 'Authorization: Bearer dev-admin-token' ...",
        )
    if Settings.model_fields["PRODUCT_SERVICE_URL"].default == settings.PRODUCT_SERVICE_URL:
        settings = settings.model_copy(
            update={"PRODUCT_SERVICE_URL": f"http://127.0.0.1:{settings.PRODUCT_PORT}"}
        )
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C outside serving (start-up)
        uvloop.run(_run(settings))
    # The requests were drained and the lifespans have stopped the relays and consumers;
    # what they held waits on disk for the next start.
    log.info("orderstack dev stopped")


async def _run(settings: Settings) -> None:
    infra = Infrastructure.embedded(settings)
    products = create_product_app(settings, infra)
    orders = create_order_app(settings, infra)
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


__all__ = ["page_url", "run_dev"]

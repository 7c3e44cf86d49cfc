"""How a service is put together: the part both services share.

A service is its tables, its queue, its handlers, its routes and its probes (each
service's ``app.py`` names those). Around them every service runs the same machinery,
built here once: the outbox relay woken by its commits, the consumer of its queue, the
broker connection retried in the background, the pruning of its outbox and inbox, its own
background tasks, the lifespan that starts and stops all of it in order (migrations
first), and the app with error mapping, limits, ``/health``, ``/readyz``, ``/metrics``
(its collectors read at scrape time: web/metrics.py, messaging/metrics.py) and the AsyncAPI
document of its events, generated from their models (messaging/asyncapi.py, web/asyncapi.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, Protocol
from urllib.parse import urlsplit

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, FastAPI

from orderstack.cache.counting import CountingProductCache
from orderstack.config import Settings
from orderstack.events import EventType, Service, consumed_by, published_by
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.asyncapi import asyncapi_document
from orderstack.messaging.consumer import ConsumerUnitOfWork, EventConsumer, EventHandler
from orderstack.messaging.metrics import dead_letter_families, event_families, outbox_families
from orderstack.messaging.outbox import OutboxRelay
from orderstack.messaging.retention import pruner_from_settings
from orderstack.messaging.runtime import MessagingRuntime
from orderstack.messaging.topology import QueueSpec
from orderstack.serving import unless_stopped
from orderstack.storage import migrate
from orderstack.storage.engine import probe_writes
from orderstack.web.app import base_app
from orderstack.web.asyncapi import add_asyncapi_routes
from orderstack.web.errors import ErrorStyle
from orderstack.web.health import HealthCheck, Probe, add_health_routes
from orderstack.web.hot import HotPath
from orderstack.web.limits import AdmissionGate, LimitCounts
from orderstack.web.metrics import (
    AppMetrics,
    HttpStats,
    add_metrics_route,
    counter_family,
    db_pool_families,
    http_families,
)

log = structlog.get_logger(__name__)


class Background(Protocol):
    """Work a service runs for as long as it runs (a sweeper, a repair, a pruner)."""

    def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True)
class ServiceSpec:
    name: migrate.ServiceName  # its migrations
    title: str
    style: ErrorStyle  # the shape of its error bodies
    outbox: sa.Table
    inbox: sa.Table
    queue: QueueSpec  # the queue it consumes
    # The table its requests write (orders, products): readiness and health probe a write
    # to it, which a stalled or locked database refuses while it still answers SELECT 1.
    writes: sa.Table


class Assembly:
    """Collects a service's parts, then builds its app (``app``). Without ``infra`` the
    service runs alone on the configured servers and closes them on shutdown; with it, on
    adapters the caller owns (both services in one process, or a test's)."""

    def __init__(self, spec: ServiceSpec, settings: Settings, infra: Infrastructure | None) -> None:
        self.spec, self.settings = spec, settings
        self._owned = infra is None
        self.infra = infra or Infrastructure.for_service(settings)
        self._cache: CountingProductCache | None = None
        if settings.METRICS_ENABLED:
            # Its own count of hits and misses, even on a cache shared with the other service.
            self._cache = CountingProductCache(self.infra.cache)
            self.infra = replace(self.infra, cache=self._cache)
        # Traces, when on (tracing.py): the service's spans under its own service.name.
        self.service_name = spec.title.replace(" ", "-")  # order-service, product-service
        tracing = self.infra.tracing
        self._tracer = tracing.tracer(self.service_name) if tracing is not None else None
        self.relay = OutboxRelay(
            self.infra.engine,
            spec.outbox,
            self.infra.bus,
            batch_size=settings.OUTBOX_BATCH_SIZE,
            workers=settings.OUTBOX_RELAY_WORKERS,
            linger=settings.BATCH_LINGER_SECONDS,
            tracer=self._tracer,
        )
        self._background: list[Background] = [
            pruner_from_settings(self.infra.engine, spec.outbox, spec.inbox, settings)
        ]
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._messaging: MessagingRuntime | None = None
        self._consumer: EventConsumer | None = None
        self._counts: list[tuple[str, str, str, Mapping[Any, int]]] = []
        self._events: tuple[tuple[EventType, ...], tuple[EventType, ...]] | None = None

    def consume(
        self,
        uow_factory: Callable[[], AbstractAsyncContextManager[ConsumerUnitOfWork]],
        handler: EventHandler,
    ) -> None:
        """Deliveries of the service's queue go to ``handler``, in batches, each batch in
        one unit of work with the inbox."""
        settings = self.settings
        consumer = EventConsumer(
            self.infra.bus,
            self.spec.queue,
            uow_factory,
            handler,
            prefetch=settings.CONSUMER_PREFETCH,
            batch_size=settings.CONSUMER_BATCH_SIZE,
            linger=settings.BATCH_LINGER_SECONDS,
            tracer=self._tracer,
        )
        self._messaging = MessagingRuntime(
            self.infra.bus, self.relay, consumer, drain_timeout=settings.SHUTDOWN_DRAIN_SECONDS
        )
        self._consumer = consumer

    def describe_events(self, service: Service) -> None:
        """The service is ``service`` of the event declarations (orderstack/events.py): the
        events declared as published and consumed by it make its AsyncAPI document
        (``/asyncapi.json``, ``/asyncapi``) and its ``events_published`` series."""
        consumes = consumed_by(service)
        if {event.name for event in consumes} != set(self.spec.queue.routing_keys):
            raise ValueError(f"{self.spec.queue.name} is not the queue of the {service}")
        self._events = (published_by(service), consumes)

    def count(self, name: str, documentation: str, label: str, counts: Mapping[Any, int]) -> None:
        """Show ``counts`` (label value -> count, a mapping the service keeps up to date) on
        ``/metrics`` as the counter ``{name}_total{{label}}``."""
        self._counts.append((name, documentation, label, counts))

    def run_in_background(self, *tasks: Background) -> None:
        self._background.extend(tasks)

    def close_on_stop(self, close: Callable[[], Awaitable[None]]) -> None:
        self._closers.append(close)

    def app(
        self,
        routers: Iterable[APIRouter],
        probes: Mapping[str, Probe],
        *,
        ready_on: Iterable[str] = ("database", "rabbitmq"),
        state: Mapping[str, Any] | None = None,
        hot_paths: Sequence[HotPath] = (),
        gates: Sequence[AdmissionGate] = (),
    ) -> FastAPI:
        """The service's app. ``probes`` gets ``database`` and ``rabbitmq`` added; ``/readyz``
        answers for ``ready_on``; ``hot_paths``: see web/hot.py; ``gates``: refusals at the
        door (web/limits.py)."""
        messaging, consumer = self._messaging, self._consumer
        if messaging is None or consumer is None:
            raise RuntimeError(f"{self.spec.name}: consume() was not called")
        infra, background, closers = self.infra, self._background, self._closers

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            if infra.tracing is not None:  # every service of the process has its tracer now
                infra.tracing.instrument_shared(infra.engine)
            # The migrations wait for a database that cannot be reached yet; a stop signal
            # meanwhile ends the start-up: nothing was started, nothing is served, exit 0.
            migrated = await unless_stopped(
                app, migrate.upgrade_when_reachable(infra.engine, self.spec.name)
            )
            if not migrated:
                log.info("stopped during start-up", service=self.spec.name)
                try:
                    yield
                finally:
                    if self._owned:
                        await infra.close()
                return
            await messaging.start()
            for task in background:
                task.start()
            try:
                yield
            finally:
                for task in reversed(background):
                    await task.stop()
                await messaging.stop()
                for close in closers:
                    await close()
                if self._owned:
                    await infra.close()

        metrics = AppMetrics(timeout=self.settings.HEALTH_TIMEOUT_SECONDS)
        http_stats, limit_counts = HttpStats(), LimitCounts()
        app = base_app(
            self.spec.title,
            self.spec.style,
            self.settings,
            lifespan,
            http_stats=http_stats if self.settings.METRICS_ENABLED else None,
            limit_counts=limit_counts,
            hot_paths=hot_paths if self.settings.HTTP_HOT_PATHS else (),
            gates=gates,
        )
        if self.settings.METRICS_ENABLED:
            self._add_metrics(metrics, http_stats, limit_counts, consumer)
            add_metrics_route(app, metrics)
        add_asyncapi_routes(app, self._asyncapi_document())
        for router in routers:
            app.include_router(router)
        if infra.tracing is not None:
            infra.tracing.instrument_app(app, self.service_name)
        for key, value in (state or {}).items():
            setattr(app.state, key, value)
        all_probes: dict[str, Probe] = {
            "database": lambda: probe_writes(infra.engine, self.spec.writes),
            **probes,
            "rabbitmq": infra.bus.is_up,
        }
        check = HealthCheck(
            all_probes, self.settings.HEALTH_TIMEOUT_SECONDS, ttl=self.settings.HEALTH_CACHE_SECONDS
        )
        # The broker's loss is ridden out once it was reached: the outbox keeps the events.
        add_health_routes(app, check, ready_on=tuple(ready_on), rides_out={"rabbitmq"})
        return app

    def _asyncapi_document(self) -> dict[str, Any]:
        if self._events is None:
            raise RuntimeError(f"{self.spec.name}: describe_events() was not called")
        publishes, consumes = self._events
        try:
            version = metadata.version("orderstack")
        except metadata.PackageNotFoundError:
            version = "0.0.0"
        return asyncapi_document(
            title=self.spec.title,
            version=version,
            queue=self.spec.queue,
            publishes=publishes,
            consumes=consumes,
            broker=_broker_host(self.settings.RABBITMQ_URL),
        )

    def _add_metrics(
        self,
        metrics: AppMetrics,
        http_stats: HttpStats,
        limit_counts: LimitCounts,
        consumer: EventConsumer,
    ) -> None:
        infra, relay, cache = self.infra, self.relay, self._cache
        publishes = sorted(e.name for e in self._events[0]) if self._events is not None else []
        metrics.add("http", lambda: http_families(http_stats, limit_counts))
        metrics.add("events", lambda: event_families(relay, consumer, publishes))
        metrics.add("outbox", lambda: outbox_families(relay))
        metrics.add("dead_letters", lambda: dead_letter_families(infra.bus, self.spec.queue))
        metrics.add("db_pool", lambda: db_pool_families(infra.engine))
        if cache is not None:
            metrics.add(
                "cache",
                lambda: [
                    counter_family(
                        "cache_requests",
                        "Product cache lookups by this service, one per id",
                        "result",
                        {"hit": cache.hits, "miss": cache.misses},
                    )
                ],
            )
        counts = list(self._counts)
        metrics.add(
            self.spec.name,
            lambda: [counter_family(name, doc, label, c) for name, doc, label, c in counts],
        )


def _broker_host(url: str | None) -> str:
    """host:port of the broker, never its credentials (the document is public)."""
    if not url:
        return "localhost:5672"
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5672}"

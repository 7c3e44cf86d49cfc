"""The machinery every service runs, the same for both: two plain functions a service's
composition root (bootstrap.py) calls in turn, the second taking what the first built.

``service_adapters``: what the service's own parts are built on, the process's adapters
with the cache counting this service's lookups, and the outbox relay its units of work wake
on commit. ``service_app``: the app around the service's parts, with the consumer of its
queue, the broker connection retried in the background, the pruning of its outbox and
inbox, its own background tasks, the lifespan that starts and stops all of it in order
(migrations first), error mapping, limits, ``/health``, ``/readyz``, ``/metrics`` (its
collectors read at scrape time: web/metrics.py, messaging/metrics.py) and the AsyncAPI
document of its events, generated from their models (messaging/asyncapi.py, web/asyncapi.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, FastAPI

from orderstack.cache.counting import CountingProductCache
from orderstack.config import Settings
from orderstack.events import Service, consumed_by, published_by
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.asyncapi import asyncapi_document
from orderstack.messaging.consumer import (
    ConsumerUnitOfWork,
    EventConsumer,
    EventHandler,
    UowFactory,
)
from orderstack.messaging.metrics import dead_letter_families, event_families, outbox_families
from orderstack.messaging.outbox import OutboxRelay
from orderstack.messaging.retention import pruner_from_settings
from orderstack.messaging.runtime import MessagingRuntime
from orderstack.messaging.topology import QueueSpec
from orderstack.serving import unless_stopped
from orderstack.storage import migrate
from orderstack.storage.engine import probe_writes
from orderstack.tracing import ServiceTracer
from orderstack.web.app import base_app
from orderstack.web.asyncapi import add_asyncapi_routes
from orderstack.web.auth import BearerTokens
from orderstack.web.docs import install_docs
from orderstack.web.errors import ErrorStyle
from orderstack.web.health import HealthCheck, Probe, add_health_routes, readiness
from orderstack.web.hosts import HostCheck
from orderstack.web.hot import HotPath, check_fast_paths
from orderstack.web.limits import AdmissionGate, LimitCounts
from orderstack.web.metrics import (
    AppMetrics,
    Histogram,
    HttpStats,
    PlainReader,
    add_metrics_route,
    batch_size_family,
    counter_family,
    db_pool_families,
    http_families,
    ready_families,
)

log = structlog.get_logger(__name__)

# The unit of work the service's consumer opens, and the command its handler makes.
UoW = TypeVar("UoW", bound=ConsumerUnitOfWork)
Command = TypeVar("Command")


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
    # Its side of the event declarations (orderstack/events.py): the events published and
    # consumed by it make its AsyncAPI document and its ``events_published`` series.
    events: Service


@dataclass(frozen=True)
class Count:
    """``counts`` (label value -> count, a mapping the service keeps up to date), shown on
    ``/metrics`` as the counter ``{name}_total{{label}}``."""

    name: str
    documentation: str
    label: str
    counts: Mapping[Any, int]


@dataclass(frozen=True)
class ServiceAdapters:
    """What a service's own parts are built on (``service_adapters``)."""

    spec: ServiceSpec
    # The process's adapters; the cache counts this service's lookups when metrics are on.
    infra: Infrastructure
    relay: OutboxRelay  # its units of work wake it on commit (``relay.notify``)
    tracer: ServiceTracer | None  # its spans, under its own service.name (tracing.py)

    @property
    def counted_cache(self) -> CountingProductCache | None:
        cache = self.infra.cache
        return cache if isinstance(cache, CountingProductCache) else None


def service_adapters(
    spec: ServiceSpec, settings: Settings, infra: Infrastructure
) -> ServiceAdapters:
    """The adapters ``infra`` as the service ``spec`` uses them, and its outbox relay
    (not started: ``service_app``'s lifespan starts it)."""
    if settings.METRICS_ENABLED:
        # Its own count of hits and misses, even on a cache shared with the other service.
        infra = replace(infra, cache=CountingProductCache(infra.cache))
    tracer = infra.tracing.tracer(_trace_name(spec)) if infra.tracing is not None else None
    relay = OutboxRelay(
        infra.engine,
        spec.outbox,
        infra.bus,
        batch_size=settings.OUTBOX_BATCH_SIZE,
        workers=settings.OUTBOX_RELAY_WORKERS,
        linger=settings.BATCH_LINGER_SECONDS,
        tracer=tracer,
    )
    return ServiceAdapters(spec, infra, relay, tracer)


def service_app(
    settings: Settings,
    adapters: ServiceAdapters,
    *,
    unit_of_work: UowFactory[UoW],
    handler: EventHandler[UoW, Command],
    routers: Iterable[APIRouter],
    probes: Mapping[str, Probe],
    background: Sequence[Background] = (),
    closers: Sequence[Callable[[], Awaitable[None]]] = (),
    counts: Sequence[Count] = (),
    histograms: Sequence[Histogram] = (),
    batches: Mapping[str, Mapping[int, int]] | None = None,
    gauges: Sequence[PlainReader] = (),
    state: Mapping[str, Any] | None = None,
    hot_paths: Sequence[HotPath] = (),
    gates: Sequence[AdmissionGate] = (),
    authentication: BearerTokens | None = None,
    owns_adapters: bool = False,
) -> FastAPI:
    """The app of the service ``adapters`` were made for (``adapters.spec``). Deliveries
    of its queue go to ``handler`` in batches, each batch in one ``unit_of_work`` that the
    consumer opens, claims the inbox in and commits (the handler only writes in it).
    ``probes`` gets ``database`` and ``rabbitmq`` added (``/readyz`` answers for those
    two); ``background`` runs from start to stop, ``closers`` are called after;
    ``hot_paths``: fast paths into routes' handlers (web/hot.py), checked against them;
    ``counts``, ``histograms``, ``gauges`` (readers of values kept in memory, never a
    query): the service's own series on ``/metrics``; ``batches``: the service's own
    batching stages (stage -> batches by size), shown with its relay's and consumer's in
    ``batch_size{stage}``;
    ``gates``: refusals at the door (web/limits.py); ``authentication``: who calls
    (web/auth.py), read by the routes' and fast paths' guards. With ``owns_adapters`` (a
    service alone in its process) the lifespan closes them on shutdown; otherwise their
    owner does (both services in one process, or a test).
    Raises ValueError when ``spec.queue`` is not the queue of the events ``spec.events``
    consumes."""
    spec, infra, relay = adapters.spec, adapters.infra, adapters.relay
    consumes = consumed_by(spec.events)
    if {event.name for event in consumes} != set(spec.queue.routing_keys):
        raise ValueError(f"{spec.queue.name} is not the queue of the {spec.events}")
    consumer = EventConsumer(
        infra.bus,
        spec.queue,
        unit_of_work,
        handler,
        trust=infra.bus.trust,  # who may publish what it consumes (messaging/trust.py)
        prefetch=settings.CONSUMER_PREFETCH,
        batch_size=settings.CONSUMER_BATCH_SIZE,
        linger=settings.BATCH_LINGER_SECONDS,
        tracer=adapters.tracer,
    )
    messaging = MessagingRuntime(
        infra.bus, relay, consumer, drain_timeout=settings.SHUTDOWN_DRAIN_SECONDS
    )
    tasks = [pruner_from_settings(infra.engine, spec.outbox, spec.inbox, settings), *background]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if infra.tracing is not None:  # every service of the process has its tracer now
            infra.tracing.instrument_shared(infra.engine)
        # The migrations wait for a database that cannot be reached yet; a stop signal
        # meanwhile ends the start-up: nothing was started, nothing is served, exit 0.
        migrated = await unless_stopped(
            app, migrate.upgrade_when_reachable(infra.engine, spec.name)
        )
        if not migrated:
            log.info("stopped during start-up", service=spec.name)
            try:
                yield
            finally:
                if owns_adapters:
                    await infra.close()
            return
        await messaging.start()
        for task in tasks:
            task.start()
        try:
            yield
        finally:
            for task in reversed(tasks):
                await task.stop()
            await messaging.stop()
            for close in closers:
                await close()
            if owns_adapters:
                await infra.close()

    http_stats, limit_counts = HttpStats(), LimitCounts()
    app = base_app(
        spec.title,
        spec.style,
        settings,
        lifespan,
        http_stats=http_stats if settings.METRICS_ENABLED else None,
        limit_counts=limit_counts,
        hot_paths=hot_paths if settings.HTTP_HOT_PATHS else (),
        gates=gates,
        authentication=authentication,
    )
    install_docs(app, enabled=settings.DOCS_ENABLED)  # from its own files, never a CDN
    app.state.public_base_url = settings.PUBLIC_BASE_URL  # the base of Link headers
    if settings.allowed_hosts is not None:  # outermost: another Host is refused first
        app.add_middleware(HostCheck, patterns=settings.allowed_hosts, style=spec.style)
    publishes = published_by(spec.events)
    metrics: AppMetrics | None = None
    if settings.METRICS_ENABLED:
        metrics = AppMetrics(timeout=settings.HEALTH_TIMEOUT_SECONDS)
        metrics.add("http", lambda: http_families(http_stats, limit_counts))
        names = sorted(event.name for event in publishes)
        metrics.add("events", lambda: event_families(relay, consumer, names))
        metrics.add("outbox", lambda: outbox_families(relay))
        metrics.add("dead_letters", lambda: dead_letter_families(infra.bus, spec.queue))
        metrics.add("db_pool", lambda: db_pool_families(infra.engine))
        stages = {
            **(batches or {}),
            "relay": relay.batch_sizes,
            "consumer": consumer.batch_sizes,
        }
        metrics.add("batches", lambda: [batch_size_family(stages)])
        cache = adapters.counted_cache
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
        counted, observed, kept = tuple(counts), tuple(histograms), tuple(gauges)
        metrics.add(
            spec.name,
            lambda: [
                *(counter_family(c.name, c.documentation, c.label, c.counts) for c in counted),
                *(h.family() for h in observed),
                *(family for read in kept for family in read()),
            ],
        )
        add_metrics_route(
            app,
            metrics,
            token=settings.METRICS_TOKEN.get_secret_value() if settings.METRICS_TOKEN else None,
            style=spec.style,
        )
    try:
        version = metadata.version("orderstack")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    add_asyncapi_routes(
        app,
        asyncapi_document(
            title=spec.title,
            version=version,
            queue=spec.queue,
            publishes=publishes,
            consumes=consumes,
            broker=_broker_host(settings.amqp_url),
        ),
    )
    routes = []
    for router in routers:
        app.include_router(router)
        routes += router.routes
    if settings.HTTP_HOT_PATHS:
        check_fast_paths(routes, hot_paths)  # each one true to its route
    if infra.tracing is not None:
        infra.tracing.instrument_app(app, _trace_name(spec))
    for key, value in (state or {}).items():
        setattr(app.state, key, value)
    all_probes: dict[str, Probe] = {
        "database": lambda: probe_writes(infra.engine, spec.writes),
        **probes,
        "rabbitmq": infra.bus.is_up,
    }
    check = HealthCheck(
        all_probes, settings.HEALTH_TIMEOUT_SECONDS, ttl=settings.HEALTH_CACHE_SECONDS
    )
    # The broker's loss is ridden out once it was reached: the outbox keeps the events.
    ready_on, rides_out = ("database", "rabbitmq"), {"rabbitmq"}
    add_health_routes(app, check, ready_on=ready_on, rides_out=rides_out)
    if metrics is not None:  # /readyz's answer, for the alert on a replica not ready

        async def is_ready() -> bool:
            return (await readiness(check, ready_on, rides_out))[0]

        metrics.add("readiness", lambda: ready_families(is_ready))
    return app


def _trace_name(spec: ServiceSpec) -> str:
    """The service's name in traces: order-service, product-service."""
    return spec.title.replace(" ", "-")


def _broker_host(url: str | None) -> str:
    """host:port of the broker, never its credentials (the document is public)."""
    if not url:
        return "localhost:5672"
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5672}"

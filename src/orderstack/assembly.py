"""How a service is put together: the part both services share.

A service is its tables, its queue, its handlers, its routes and its probes (each
service's ``app.py`` names those). Around them every service runs the same machinery,
built here once: the outbox relay woken by its commits, the consumer of its queue, the
broker connection retried in the background, the pruning of its outbox and inbox, its own
background tasks, the lifespan that starts and stops all of it in order (migrations
first), and the app with error mapping, limits, ``/health`` and ``/readyz``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI

from orderstack.config import Settings
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.consumer import ConsumerUnitOfWork, EventConsumer, EventHandler
from orderstack.messaging.outbox import OutboxRelay
from orderstack.messaging.retention import pruner_from_settings
from orderstack.messaging.runtime import MessagingRuntime
from orderstack.messaging.topology import QueueSpec
from orderstack.storage import migrate
from orderstack.storage.engine import ping
from orderstack.web.app import base_app
from orderstack.web.errors import ErrorStyle
from orderstack.web.health import HealthCheck, Probe, add_health_routes


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


class Assembly:
    """Collects a service's parts, then builds its app (``app``). Without ``infra`` the
    service runs alone on the configured servers and closes them on shutdown; with it, on
    adapters the caller owns (both services in one process, or a test's)."""

    def __init__(self, spec: ServiceSpec, settings: Settings, infra: Infrastructure | None) -> None:
        self.spec, self.settings = spec, settings
        self._owned = infra is None
        self.infra = infra or Infrastructure.for_service(settings)
        self.relay = OutboxRelay(
            self.infra.engine,
            spec.outbox,
            self.infra.bus,
            batch_size=settings.OUTBOX_BATCH_SIZE,
            workers=settings.OUTBOX_RELAY_WORKERS,
            linger=settings.BATCH_LINGER_SECONDS,
        )
        self._background: list[Background] = [
            pruner_from_settings(self.infra.engine, spec.outbox, spec.inbox, settings)
        ]
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._messaging: MessagingRuntime | None = None

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
        )
        self._messaging = MessagingRuntime(self.infra.bus, self.relay, consumer)

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
    ) -> FastAPI:
        """The service's app. ``probes`` gets ``database`` and ``rabbitmq`` added; ``/readyz``
        answers for ``ready_on``."""
        messaging = self._messaging
        if messaging is None:
            raise RuntimeError(f"{self.spec.name}: consume() was not called")
        infra, background, closers = self.infra, self._background, self._closers

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            await migrate.upgrade_when_reachable(infra.engine, self.spec.name)
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

        app = base_app(self.spec.title, self.spec.style, self.settings, lifespan)
        for router in routers:
            app.include_router(router)
        for key, value in (state or {}).items():
            setattr(app.state, key, value)
        all_probes: dict[str, Probe] = {
            "database": lambda: ping(infra.engine),
            **probes,
            "rabbitmq": infra.bus.is_up,
        }
        check = HealthCheck(
            all_probes, self.settings.HEALTH_TIMEOUT_SECONDS, ttl=self.settings.HEALTH_CACHE_SECONDS
        )
        add_health_routes(app, check, ready_on=tuple(ready_on))
        return app

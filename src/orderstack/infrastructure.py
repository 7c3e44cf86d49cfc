"""The adapters a process runs on, chosen from the settings in one place
(``Infrastructure.from_settings``).

Servers when configured (MariaDB/MySQL, RabbitMQ, Redis); otherwise the embedded default
(SQLite, in-process bus, in-process cache), which only makes sense with both services in
one process, so a service started alone without a broker is refused with a clear message.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.cache.port import KnownEpoch, ProductCache
from orderstack.cache.redis import RedisProductCache
from orderstack.config import ConfigError, Settings
from orderstack.messaging.bus import Bus
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.rabbitmq import FRAME_BUFFER, RabbitMQBus, tune_aiormq
from orderstack.messaging.topology import QueueType
from orderstack.messaging.trust import PublisherTrust
from orderstack.storage.engine import create_engine
from orderstack.tracing import Tracing


@dataclass
class Infrastructure:
    engine: AsyncEngine
    bus: Bus
    cache: ProductCache
    # Traces (tracing.py): None, off, unless OTEL_EXPORTER_OTLP_ENDPOINT is set.
    tracing: Tracing | None = None
    # The product database's epoch, once the product service in this process read it: the
    # order service beside it (same process, same database) trusts cache entries of it.
    known_epoch: KnownEpoch = field(default_factory=KnownEpoch)

    @classmethod
    def from_settings(cls, settings: Settings, *, both_services: bool) -> Infrastructure:
        """The adapters of one process: the servers that are configured, the embedded ones
        for the others. The in-process bus only reaches services in the same process, so
        without RABBITMQ_URL a process running one service alone (``both_services`` False)
        raises ConfigError."""
        bus = bus_from_settings(settings, both_services=both_services)  # refused first
        return cls(
            engine=create_engine(
                settings.database_url,
                pool_size=settings.DB_POOL_SIZE,
                timeouts=settings.db_timeouts,
            ),
            bus=bus,
            cache=cache_from_settings(settings),
            tracing=Tracing.from_endpoint(settings.OTEL_EXPORTER_OTLP_ENDPOINT),
        )

    async def close(self) -> None:
        await self.bus.close()
        await self.cache.close()
        await self.engine.dispose()
        if self.tracing is not None:  # exports what is left (a blocking call: in a thread)
            await asyncio.to_thread(self.tracing.shutdown)


def rabbitmq_bus(
    url: str,
    queue_type: QueueType = "quorum",
    trust: PublisherTrust | None = None,
    *,
    batch_events: int = 1,
) -> RabbitMQBus:
    """A RabbitMQ bus declaring ``queue_type`` queues, with aiormq tuned first
    (idempotent); ``trust``: each service's broker user (None: the URL's user for all);
    ``batch_events``: events of one name per message it publishes (EVENT_BATCH_SIZE).
    Raises UnsupportedAiormqVersion on an aiormq the tuning was not checked
    against: better to refuse to start than to run a tenth as fast without knowing why."""
    tune_aiormq(FRAME_BUFFER)
    return RabbitMQBus(url, queue_type, trust, batch_events=batch_events)


def bus_from_settings(settings: Settings, *, both_services: bool) -> Bus:
    """RabbitMQ when RABBITMQ_URL is set; otherwise the in-process bus, which only
    ``both_services`` in one process can share: else raises ConfigError."""
    if settings.amqp_url:
        trust = PublisherTrust.from_settings(settings)
        return rabbitmq_bus(
            settings.amqp_url, settings.QUEUE_TYPE, trust, batch_events=settings.EVENT_BATCH_SIZE
        )
    if not both_services:
        raise ConfigError(
            "RABBITMQ_URL is not set: a service started on its own needs a broker. "
            "Set RABBITMQ_URL, or run both services in one process with `orderstack dev`."
        )
    return InProcessBus(settings.local_bus_path)


def cache_from_settings(settings: Settings) -> ProductCache:
    if settings.redis_url:
        return RedisProductCache(settings.redis_url, ttl_seconds=settings.CACHE_TTL_SECONDS)
    return InProcessProductCache(ttl_seconds=settings.CACHE_TTL_SECONDS)

"""Starts and stops a service's messaging: connect (retrying), relay, consumer.

The broker may be down when a replica starts (a restart during an outage): the service
still starts and takes requests, the outbox holds the events, and the connection is retried
in the background until the broker is back.
"""

from __future__ import annotations

import asyncio

import structlog

from orderstack.backoff import Backoff
from orderstack.messaging.bus import Bus
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.outbox import OutboxRelay

log = structlog.get_logger(__name__)


class MessagingRuntime:
    def __init__(self, bus: Bus, relay: OutboxRelay, consumer: EventConsumer) -> None:
        self.bus, self.relay, self.consumer = bus, relay, consumer
        self._connector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.relay.start()
        self._connector = asyncio.create_task(self._connect(), name="messaging-connect")

    async def _connect(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await self.bus.start()
                await self.consumer.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                wait = backoff.next()
                log.warning("broker unavailable, retrying", error=repr(exc), retry_in=wait)
                await asyncio.sleep(wait)
                continue
            self.relay.notify()  # publish whatever waited for the broker
            log.info("messaging connected")
            return

    async def stop(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        await self.consumer.stop()
        await self.relay.stop()

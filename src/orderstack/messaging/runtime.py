"""Starts and stops a service's messaging: connect (retrying), relay, consumer.

The broker may be down when a replica starts (a restart during an outage): the service
still starts and takes requests, the outbox holds the events, and the connection is retried
in the background until the broker is back.

Stopping (after the HTTP server has answered its requests in flight): the consumer stops
taking deliveries and settles what it holds (commit, then ack), then the relay publishes
once more what was committed, all within ``drain_timeout`` seconds; the caller closes the
pools after. Nothing accepted is lost when the drain is cut off: unacked deliveries are
redelivered and unsent outbox rows wait for the next relay.
"""

from __future__ import annotations

import asyncio

import structlog

from orderstack.backoff import Backoff
from orderstack.messaging.bus import Bus
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.outbox import OutboxRelay

log = structlog.get_logger(__name__)


DEFAULT_DRAIN_SECONDS = 5.0


class MessagingRuntime:
    def __init__(
        self,
        bus: Bus,
        relay: OutboxRelay,
        consumer: EventConsumer,
        *,
        drain_timeout: float = DEFAULT_DRAIN_SECONDS,
    ) -> None:
        self.bus, self.relay, self.consumer = bus, relay, consumer
        self.drain_timeout = drain_timeout
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
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.drain_timeout
        if self._connector is not None:
            self._connector.cancel()  # still connecting: nothing was taken yet
            await asyncio.gather(self._connector, return_exceptions=True)
        await self.consumer.stop(timeout=max(0.0, deadline - loop.time()))
        await self.relay.stop(timeout=max(0.0, deadline - loop.time()))
        log.info("messaging stopped", seconds=round(loop.time() - started, 3))

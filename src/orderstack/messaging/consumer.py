"""The consumer loop shared by both services: decode, claim in the inbox, apply, ack.

Deliveries are taken in batches (up to ``batch_size`` of what the prefetch window holds)
and settled in one transaction: the inbox claim, the effects and the outbox rows commit
together, and only then are the deliveries acknowledged. A redelivery after a crash or a
broker restart finds its id in the inbox and changes nothing.

Failures:
- a message that cannot be decoded or validated goes to the dead-letter queue at once;
- a transient failure (database gone, deadlock) retries the batch with backoff, without
  limit: dead-lettering an ``order.created`` because the database blinked would lose an order;
- any other failure splits the batch and retries each message a bounded number of times,
  then dead-letters the one that still fails.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import structlog

from orderstack.backoff import Backoff
from orderstack.messaging.bus import Bus, Delivery
from orderstack.messaging.envelope import Event, MalformedEvent, decode
from orderstack.messaging.inbox import Inbox
from orderstack.messaging.topology import QueueSpec
from orderstack.storage.engine import is_transient

log = structlog.get_logger(__name__)

ATTEMPTS_PER_MESSAGE = 3
# How a delivery ends: its effects committed, found in the inbox already, or dead-lettered.
OUTCOMES = ("applied", "duplicate", "dead_lettered")


class ConsumerUnitOfWork(Protocol):
    inbox: Inbox

    async def commit(self) -> None: ...


class EventHandler(Protocol):
    def validate(self, event: Event) -> Any:
        """Turn the event into the handler's command; raise MalformedEvent when it is unusable."""

    async def apply(self, uow: Any, commands: Sequence[Any]) -> None:
        """Apply the commands inside the open unit of work (the caller commits)."""


UowFactory = Callable[[], AbstractAsyncContextManager[ConsumerUnitOfWork]]


class EventConsumer:
    def __init__(
        self,
        bus: Bus,
        queue: QueueSpec,
        uow_factory: UowFactory,
        handler: EventHandler,
        *,
        prefetch: int = 200,
        batch_size: int = 100,
        linger: float = 0.0,
    ) -> None:
        """``linger``: after the first delivery of a batch, how long to let others join it.
        A few milliseconds turn a trickle of one-message transactions into a few larger
        ones, which costs far less CPU per message under load."""
        self._bus, self._queue = bus, queue
        self._uow_factory, self._handler = uow_factory, handler
        self._prefetch, self._batch_size = prefetch, batch_size
        self._linger = linger
        self._pending: asyncio.Queue[Delivery] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.dead_lettered = 0
        # Settled deliveries by (event, outcome): applied, duplicate (the inbox had it), or
        # dead_lettered; read by /metrics. A dead letter whose routing key is not one of the
        # queue's events counts under "unknown", so bad input cannot add series. The
        # queue's events start at 0, so that a rate is defined before the first one.
        self.settled: Counter[tuple[str, str]] = Counter(
            {(event, outcome): 0 for event in queue.routing_keys for outcome in OUTCOMES}
        )

    async def start(self) -> None:
        self._task = asyncio.create_task(self._work(), name=f"consumer:{self._queue.name}")
        await self._bus.consume(self._queue, self._enqueue, self._prefetch)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _enqueue(self, delivery: Delivery) -> None:
        self._pending.put_nowait(delivery)

    async def _work(self) -> None:
        while True:
            batch = [await self._pending.get()]
            if self._linger and self._pending.qsize() < self._batch_size - 1:
                await asyncio.sleep(self._linger)
            while len(batch) < self._batch_size and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            try:
                await self.process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one batch stop the consumer
                log.exception("consumer batch crashed", queue=self._queue.name)

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        """Settle a batch of deliveries: every one ends acked or dead-lettered."""
        accepted: list[tuple[Delivery, Event, Any]] = []
        for delivery in deliveries:
            try:
                event = decode(
                    delivery.body, message_id=delivery.message_id, routing_key=delivery.routing_key
                )
                accepted.append((delivery, event, self._handler.validate(event)))
            except MalformedEvent as exc:
                await self._dead_letter(delivery, str(exc))
        if not accepted:
            return
        try:
            await self._apply_with_retry(accepted, whole_batch=True)
        except _NonTransient:
            for item in accepted:
                try:
                    await self._apply_with_retry([item], whole_batch=False)
                except _NonTransient as exc:
                    await self._dead_letter(item[0], repr(exc.__cause__))
                    continue
                await self._ack([item[0]])
            return
        await self._ack([d for d, _, _ in accepted])

    async def _apply_with_retry(
        self, items: Sequence[tuple[Delivery, Event, Any]], *, whole_batch: bool
    ) -> None:
        backoff, failures = Backoff(0.05, 2.0), 0
        while True:
            try:
                await self._apply(items)
                return
            except Exception as exc:
                if is_transient(exc):
                    log.warning(
                        "transient failure, retrying",
                        queue=self._queue.name,
                        error=repr(exc),
                        batch=len(items),
                    )
                    await asyncio.sleep(backoff.next())
                    continue
                failures += 1
                if whole_batch or failures >= ATTEMPTS_PER_MESSAGE:
                    raise _NonTransient() from exc
                await asyncio.sleep(backoff.next())

    async def _apply(self, items: Sequence[tuple[Delivery, Event, Any]]) -> None:
        by_id = {event.id: command for _, event, command in items}
        async with self._uow_factory() as uow:
            fresh = await uow.inbox.claim([event for _, event, _ in items])
            if fresh:
                await self._handler.apply(uow, [by_id[e.id] for e in fresh])
            await uow.commit()
        applied = {e.id for e in fresh}
        for _, event, _ in items:
            if event.id in applied:
                applied.discard(event.id)  # a second copy in the same batch is a duplicate
                self.settled[(event.name, "applied")] += 1
            else:
                self.settled[(event.name, "duplicate")] += 1

    async def _ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            try:
                await delivery.ack()
            except Exception as exc:  # channel lost: the broker redelivers, the inbox absorbs it
                log.warning("ack failed", queue=self._queue.name, error=repr(exc))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        log.warning(
            "dead-lettering message",
            queue=self._queue.name,
            message_id=delivery.message_id,
            routing_key=delivery.routing_key,
            reason=reason[:200],
        )
        self.dead_lettered += 1
        key = delivery.routing_key
        event = key if key is not None and key in self._queue.routing_keys else "unknown"
        self.settled[(event, "dead_lettered")] += 1
        try:
            await delivery.dead_letter(reason)
        except Exception as exc:
            log.warning("dead-letter failed", queue=self._queue.name, error=repr(exc))


class _NonTransient(Exception):
    pass


__all__ = ["EventConsumer", "EventHandler", "ConsumerUnitOfWork"]

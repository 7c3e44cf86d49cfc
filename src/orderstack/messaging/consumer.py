"""The consumer loop shared by both services: decode, claim in the inbox, apply, ack.

Deliveries are taken in batches (up to ``batch_size`` of what the prefetch window holds)
and settled in one transaction: the inbox claim, the effects and the outbox rows commit
together, and only then are the deliveries acknowledged. A redelivery after a crash or a
broker restart finds its id in the inbox and changes nothing.

Who owns the transaction: the consumer. It opens the unit of work (``uow_factory``),
claims the batch's ids in its inbox, hands it to ``EventHandler.apply`` and commits it;
the handler and the event use cases it calls only write in it (their parameter is the
service's ``Transaction`` type, which has no ``commit``: messaging/uow.py). A request's use
case is the other kind: it opens its own unit of work and commits it.
The seam is typed: ``EventConsumer[UoW, Command]`` takes a factory of ``UoW`` and an
``EventHandler[UoW, Command]`` whose ``validate`` makes the ``Command`` its ``apply`` takes.

Trust: with ``trust`` (the bus's, messaging/trust.py), an event is believed only from the
broker user of the service that publishes it (its delivery's ``user_id``, which the broker
checked); any other, or none, goes to the dead-letter queue at once with the reason
``untrusted_publisher``, before its payload is even read, and changes nothing.

Failures:
- a message that cannot be decoded or validated goes to the dead-letter queue at once;
- a transient failure (database gone, deadlock) retries the batch with backoff, without
  limit: dead-lettering an ``order.created`` because the database blinked would lose an order;
- any other failure splits the batch and retries each message a bounded number of times,
  then dead-letters the one that still fails.

Origins: a batch's log lines carry the request ids of its messages (``request_ids``, from
their ``x-request-id`` headers), and a handler logs about one message within
``bound_to(event)`` (its ``request_id``); ``events_being_applied`` gives a handler the
events of the commands it applies. With a tracer, a batch is one ``consume <queue>`` span
linked to each message's ``traceparent`` (tracing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Generic, Never, Protocol, TypeVar, cast

import structlog
from pydantic import BaseModel, ValidationError

from orderstack import tracing
from orderstack.backoff import Backoff
from orderstack.events import EventType, Service, consumed_by
from orderstack.logging import REQUEST_ID_KEY, valid_request_id
from orderstack.messaging.bus import Bus, Delivery
from orderstack.messaging.envelope import REQUEST_ID_HEADER, Event, MalformedEvent, decode
from orderstack.messaging.inbox import Inbox
from orderstack.messaging.topology import QueueSpec
from orderstack.messaging.trust import PublisherTrust
from orderstack.periodic import cancel_and_wait, raise_if_cancelled
from orderstack.storage.engine import is_transient

log = structlog.get_logger(__name__)

ATTEMPTS_PER_MESSAGE = 3
# How a delivery ends: its effects committed, found in the inbox already, or dead-lettered.
OUTCOMES = ("applied", "duplicate", "dead_lettered")
# How long stop() waits for the broker to confirm the subscription's cancel.
CANCEL_TIMEOUT_SECONDS = 2.0


class ConsumerUnitOfWork(Protocol):
    """What the consumer needs of its unit of work: the inbox it claims ids in, and the
    commit it makes (after the handler applied the batch in it)."""

    @property
    def inbox(self) -> Inbox: ...

    async def commit(self) -> None: ...


# The unit of work a service's consumer opens (its own: OrderUnitOfWork, a test's fake) and
# the command its handler makes of an event (SettleOrder, ReserveStock | CancelReservation).
UoW = TypeVar("UoW", bound=ConsumerUnitOfWork)
UoW_contra = TypeVar("UoW_contra", contravariant=True)
Command = TypeVar("Command")
C = TypeVar("C")


class EventHandler(Protocol[UoW_contra, Command]):
    """A service's side of the consumer: ``validate`` turns each event into a command,
    ``apply`` applies a batch of them inside the consumer's open unit of work, which the
    consumer commits with the inbox claim (the handler never commits)."""

    def validate(self, event: Event) -> Command:
        """Turn the event into the handler's command; raise MalformedEvent when it is unusable."""
        ...

    async def apply(self, uow: UoW_contra, commands: Sequence[Command]) -> None:
        """Apply the commands inside the open unit of work (the caller commits)."""
        ...


UowFactory = Callable[[], AbstractAsyncContextManager[UoW]]
# A route: the event's payload, as its ``reads`` model reads it, to a command. Typed on the
# payload it takes (``Callable[[OrderCreatedPayload], ReserveStock]``); any one-argument
# function is one, and ``EventRoutes`` gives each only its own event's model.
Route = Callable[[Never], C]


class EventRoutes(Generic[C]):
    """How a service's handler reads what it consumes: for each event declared as consumed
    by ``service`` (orderstack/events.py), a function from the payload, read with the
    event's ``reads`` model, to the handler's command. Refuses routes that are not exactly
    those events, so a declaration and its handler cannot part."""

    def __init__(self, service: Service, routes: Mapping[EventType, Route[C]]) -> None:
        consumed = {event.name for event in consumed_by(service)}
        routed = {event.name for event in routes}
        if routed != consumed:
            raise ValueError(
                f"the {service} consumes {sorted(consumed)} but its handler routes {sorted(routed)}"
            )
        self._routes = {event.name: (event, route) for event, route in routes.items()}

    def read(self, event: Event) -> C:
        """The command ``event`` stands for; MalformedEvent when it is not one the service
        consumes or its payload does not hold what the service requires."""
        found = self._routes.get(event.name)
        if found is None:
            raise MalformedEvent(f"unexpected event {event.name!r}")
        declared, route = found
        assert declared.reads is not None  # every consumed event has one (EventType)
        try:
            payload = declared.reads.model_validate(event.data)
        except ValidationError as exc:
            raise MalformedEvent(f"invalid {event.name}: {exc.errors()[0]['msg']}") from None
        # The route was given for this event: it takes this event's ``reads`` model.
        return cast(Callable[[BaseModel], C], route)(payload)


# Set while a handler applies commands: the events they came from, in the same order.
_applying: ContextVar[Sequence[Event]] = ContextVar("consumer_applying", default=())


def events_being_applied() -> Sequence[Event]:
    """Inside ``EventHandler.apply``: the events of the commands it was given, in their
    order (so a handler can give each command's effects the origin of its event)."""
    return _applying.get()


@contextlib.contextmanager
def bound_to(event: Event) -> Iterator[None]:
    """Log lines written meanwhile carry the request id of ``event`` (when it has one)."""
    if event.request_id is None:
        yield
        return
    with structlog.contextvars.bound_contextvars(**{REQUEST_ID_KEY: event.request_id}):
        yield


class EventConsumer(Generic[UoW, Command]):
    """Consumes ``queue``: each batch applied by ``handler`` in one unit of work of
    ``uow_factory``, which this consumer opens, claims the inbox in and commits."""

    def __init__(
        self,
        bus: Bus,
        queue: QueueSpec,
        uow_factory: UowFactory[UoW],
        handler: EventHandler[UoW, Command],
        *,
        prefetch: int = 200,
        batch_size: int = 100,
        linger: float = 0.0,
        tracer: tracing.ServiceTracer | None = None,
        trust: PublisherTrust | None = None,
    ) -> None:
        """``linger``: after the first delivery of a batch, how long to let others join it.
        A few milliseconds turn a trickle of one-message transactions into a few larger
        ones, which costs far less CPU per message under load. ``trust``: whose events to
        believe (a service's consumer gets its bus's, assembly.py); None checks no
        publisher (tests of other concerns, on deliveries that carry none)."""
        self._bus, self._queue = bus, queue
        self._trust = trust
        self._tracer = tracer
        self._uow_factory, self._handler = uow_factory, handler
        self._prefetch, self._batch_size = prefetch, batch_size
        self._linger = linger
        # Deliveries received, in order; None is the end mark stop() puts after them.
        self._pending: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.dead_lettered = 0
        # Settled deliveries by (event, outcome): applied, duplicate (the inbox had it), or
        # dead_lettered; read by /metrics. A dead letter whose routing key is not one of the
        # queue's events counts under "unknown", so bad input cannot add series. The
        # queue's events start at 0, so that a rate is defined before the first one.
        self.settled: Counter[tuple[str, str]] = Counter(
            {(event, outcome): 0 for event in queue.routing_keys for outcome in OUTCOMES}
        )
        # Deliveries per transaction (a batch's valid ones), by count: read by /metrics.
        self.batch_sizes: Counter[int] = Counter()

    async def start(self) -> None:
        if self._task is None or self._task.done():  # a retried start keeps one worker
            self._task = asyncio.create_task(self._work(), name=f"consumer:{self._queue.name}")
        await self._bus.consume(self._queue, self._enqueue, self._prefetch)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking deliveries (the subscription is cancelled), then settle what is
        held: the batch being processed and the deliveries already received are committed
        and acked, batch by batch; never cancelled midway unless ``timeout`` (seconds)
        runs out. Cut off then, the open transaction rolls back and the deliveries stay
        unacked: the broker gives them to another consumer, the inbox absorbs repeats."""
        task, self._task = self._task, None
        if task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        cancel_by = loop.time() + CANCEL_TIMEOUT_SECONDS
        try:
            async with asyncio.timeout_at(
                cancel_by if deadline is None else min(deadline, cancel_by)
            ):
                await self._bus.stop_consuming(self._queue)
        except Exception as exc:  # broker gone: nothing more comes anyway
            log.warning("consumer cancel failed", queue=self._queue.name, error=repr(exc))
        held = self._pending.qsize()
        self._pending.put_nowait(None)  # after what is held: the worker ends there
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait({task}, timeout=remaining)
        if not done:
            log.warning(
                "consumer stop timed out, its unacked deliveries go back to the queue",
                queue=self._queue.name,
                timeout=timeout,
            )
            await cancel_and_wait(task)
            return
        log.info("consumer stopped", queue=self._queue.name, held=held)

    async def _enqueue(self, delivery: Delivery) -> None:
        self._pending.put_nowait(delivery)

    async def _work(self) -> None:
        while True:
            first = await self._pending.get()
            if first is None:  # stop(): everything before it was settled
                return
            batch, last = [first], False
            if self._linger and self._pending.qsize() < self._batch_size - 1:
                await asyncio.sleep(self._linger)
            while len(batch) < self._batch_size and not self._pending.empty():
                delivery = self._pending.get_nowait()
                if delivery is None:
                    last = True
                    break
                batch.append(delivery)
            try:
                await self.process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one batch stop the consumer
                raise_if_cancelled()
                log.exception("consumer batch crashed", queue=self._queue.name)
            if last:
                return

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        """Settle a batch of deliveries: every one ends acked or dead-lettered."""
        accepted: list[tuple[Delivery, Event, Command]] = []
        for delivery in deliveries:
            try:
                event = decode(
                    delivery.body,
                    message_id=delivery.message_id,
                    routing_key=delivery.routing_key,
                    headers=delivery.headers,
                )
                if self._trust is not None:
                    refusal = self._trust.refusal(event.name, delivery.user_id)
                    if refusal is not None:
                        raise MalformedEvent(refusal)
                accepted.append((delivery, event, self._handler.validate(event)))
            except MalformedEvent as exc:
                await self._dead_letter(delivery, str(exc))
        if not accepted:
            return
        self.batch_sizes[len(accepted)] += 1
        request_ids = sorted({e.request_id for _, e, _ in accepted if e.request_id})
        with contextlib.ExitStack() as scope:
            if request_ids:  # the batch's log lines name the requests behind it
                scope.enter_context(
                    structlog.contextvars.bound_contextvars(request_ids=request_ids)
                )
            if self._tracer is not None:
                scope.enter_context(
                    self._tracer.batch_span(
                        f"consume {self._queue.name}",
                        [e.traceparent for _, e, _ in accepted],
                        kind="CONSUMER",
                        attributes={
                            "messaging.operation.type": "process",
                            "messaging.destination.name": self._queue.name,
                            "messaging.batch.message_count": len(accepted),
                        },
                    )
                )
            await self._settle(accepted)

    async def _settle(self, accepted: Sequence[tuple[Delivery, Event, Command]]) -> None:
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
        self, items: Sequence[tuple[Delivery, Event, Command]], *, whole_batch: bool
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

    async def _apply(self, items: Sequence[tuple[Delivery, Event, Command]]) -> None:
        by_id = {event.id: command for _, event, command in items}
        async with self._uow_factory() as uow:
            fresh = await uow.inbox.claim([event for _, event, _ in items])
            if fresh:
                token = _applying.set(fresh)
                try:
                    await self._handler.apply(uow, [by_id[e.id] for e in fresh])
                finally:
                    _applying.reset(token)
            await uow.commit()
        applied = {e.id for e in fresh}
        for _, event, _ in items:
            if event.id in applied:
                applied.discard(event.id)  # a second copy in the same batch is a duplicate
                self.settled[(event.name, "applied")] += 1
            else:
                self.settled[(event.name, "duplicate")] += 1

    async def _ack(self, deliveries: Sequence[Delivery]) -> None:
        try:
            await self._bus.ack_all(deliveries)
        except Exception as exc:  # channel lost: the broker redelivers, the inbox absorbs it
            log.warning("ack failed", queue=self._queue.name, error=repr(exc))

    async def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        raw = (delivery.headers or {}).get(REQUEST_ID_HEADER)
        # By the HTTP header's rule, as decode reads it: CR/LF or an escape never reaches a log.
        request_id = valid_request_id(_text(raw)) if raw else None
        with structlog.contextvars.bound_contextvars(
            **({REQUEST_ID_KEY: request_id} if request_id else {})
        ):
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


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")[:128]
    return str(value)[:128]


__all__ = [
    "ConsumerUnitOfWork",
    "EventConsumer",
    "EventHandler",
    "bound_to",
    "events_being_applied",
]

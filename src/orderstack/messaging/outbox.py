"""Transactional outbox: events written with the change that causes them, relayed after commit.

A row is written in the caller's transaction (``OutboxWriter.add``). ``OutboxRelay`` takes a
batch of unsent rows with ``FOR UPDATE SKIP LOCKED`` (so replicas share the work without
sending a row twice at once), publishes them with confirms, marks them sent and commits.
A crash anywhere before that commit leaves the rows unsent, and the next round sends them
again: delivery is at least once, and the consumers' inbox makes it exactly-once in effect.
Sent rows are deleted after OUTBOX_RETENTION_SECONDS by the service's RetentionPruner
(messaging/retention.py), in bounded batches.

Each row also keeps its origin (``request_id``, ``traceparent``): the X-Request-ID bound
to the logs of the request that wrote it, and the W3C traceparent of its span when tracing
is on, or those of the event it answers (``caused_by``). The relay sends them as the
message's headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from typing import cast

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack import tracing
from orderstack.backoff import Backoff
from orderstack.logging import current_request_id
from orderstack.messaging.bus import Bus
from orderstack.messaging.envelope import Event
from orderstack.periodic import cancel_and_wait, raise_if_cancelled
from orderstack.storage.inserts import insert_rows
from orderstack.storage.slots import filled, in_slots, slots
from orderstack.storage.types import BigId, UtcDateTime, utcnow

log = structlog.get_logger(__name__)


def outbox_table(metadata: sa.MetaData, prefix: str) -> sa.Table:
    return sa.Table(
        f"{prefix}_outbox",
        metadata,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("published_at", UtcDateTime, nullable=True),
        # The origin (orders_0006, products_0005): see the module docstring.
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("traceparent", sa.String(128), nullable=True),
        sa.Index(f"ix_{prefix}_outbox_unsent", "published_at", "id"),
    )


@dataclass(frozen=True, slots=True)
class Origin:
    """Where events come from: a request id and a W3C traceparent (either may be None)."""

    request_id: str | None = None
    traceparent: str | None = None

    @classmethod
    def current(cls) -> Origin:
        """The running task's: the request id bound to its logs, its current span."""
        return cls(current_request_id(), tracing.current_traceparent())

    def stamp(self, event: Event) -> Event:
        return replace(event, request_id=self.request_id, traceparent=self.traceparent)


# While set (``caused_by``): the event that caused an event being added, if any.
_cause_of: ContextVar[Callable[[Event], Event | None] | None] = ContextVar(
    "outbox_cause_of", default=None
)


@contextlib.contextmanager
def caused_by(cause_of: Callable[[Event], Event | None]) -> Iterator[None]:
    """Events added meanwhile for which ``cause_of`` finds the event that caused them (a
    consumer's handler answering the messages of a batch) take that event's request id,
    and the current span's traceparent (else the cause's)."""
    token = _cause_of.set(cause_of)
    try:
        yield
    finally:
        _cause_of.reset(token)


def with_origin(events: Sequence[Event]) -> list[Event]:
    """The events, each with an origin: its own, else its cause's request id (``caused_by``)
    or the running task's (the request id bound to its logs), with the current span."""
    cause_of = _cause_of.get()
    current: Origin | None = None
    stamped = []
    for event in events:
        if event.request_id is None and event.traceparent is None:
            cause = cause_of(event) if cause_of is not None else None
            current = current or Origin.current()
            if cause is not None:  # the cause's request; the span handling it, if traced
                traceparent = current.traceparent or cause.traceparent
                event = replace(event, request_id=cause.request_id, traceparent=traceparent)
            else:
                event = current.stamp(event)
        stamped.append(event)
    return stamped


@functools.lru_cache(maxsize=32)
def _mark_sent(table: sa.Table, size: int) -> sa.Update:
    """The relay's UPDATE of the rows it sent, ``id{i}`` (up to ``size``, storage/slots.py),
    at ``sent_at``."""
    return (
        table.update()
        .where(in_slots(table.c.id, "id", size))
        .values(published_at=sa.bindparam("sent_at", type_=UtcDateTime))
    )


class OutboxWriter:
    """Adds events to the outbox inside an open transaction."""

    def __init__(self, conn: AsyncConnection, table: sa.Table) -> None:
        self._conn, self._table = conn, table
        self.added = 0

    async def add(self, events: Sequence[Event]) -> None:
        if not events:
            return
        now = utcnow()
        await insert_rows(
            self._conn,
            self._table,
            [
                {
                    "event_id": e.id,
                    "event_type": e.name,
                    "payload": orjson.dumps(e.data).decode(),
                    "created_at": now,
                    "request_id": e.request_id,
                    "traceparent": e.traceparent,
                }
                for e in with_origin(events)
            ],
        )
        self.added += len(events)


class OutboxRelay:
    """Publishes unsent outbox rows; woken right after a commit, polling as a fallback."""

    def __init__(
        self,
        engine: AsyncEngine,
        table: sa.Table,
        bus: Bus,
        *,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        workers: int = 2,
        linger: float = 0.0,
        publish_timeout: float = 15.0,
        tracer: tracing.ServiceTracer | None = None,
    ) -> None:
        """``workers`` rounds run at once, on disjoint rows (SKIP LOCKED): while one waits
        for the broker's confirms, the next takes the rows committed meanwhile. With a
        ``tracer``, each publish is an ``outbox publish`` span linked to its rows' origins."""
        self._engine, self._table, self._bus = engine, table, bus
        self._tracer = tracer
        self._batch_size, self._workers = batch_size, workers
        # After a wake-up, how long to let other commits' rows join the round.
        self._linger = linger
        self._poll_interval = poll_interval
        self._publish_timeout = publish_timeout
        # Idle workers, each waiting on its own future: a commit wakes one of them, not
        # all (a second worker woken for the same rows would find them locked and open
        # an empty transaction). With none idle, ``_missed`` says a round is owed.
        self._idle: deque[asyncio.Future[None]] = deque()
        self._missed = False
        # A worker was woken and has not sent its SELECT yet: that SELECT will see every
        # commit notified meanwhile, so those wake no one else (a second worker would find
        # the rows locked by the first, or taken: an empty transaction per order at low
        # rates, half the relay's rounds).
        self._select_owed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._in_round: set[asyncio.Task[None]] = set()  # workers inside relay_once
        self._stopping = False
        self.published = 0
        self.published_by_event: Counter[str] = Counter()  # read by /metrics
        self.batch_sizes: Counter[int] = Counter()  # rows per publish, by count: /metrics

    def notify(self) -> None:
        """Called after a commit that added events: publish now rather than at the next poll.
        Wakes one idle worker; when every worker is in a round, the first to finish goes
        round again (its rows were committed after that round's SELECT, maybe). While a
        worker woken earlier has not sent its SELECT, nothing: that SELECT sees these rows."""
        if self._select_owed:
            return
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._select_owed = True
                return
        self._missed = True

    def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._run(), name=f"relay:{self._table.name}:{i}")
            for i in range(self._workers)
        ]

    async def stop(self, timeout: float | None = None, *, final_round: bool = True) -> None:
        """Stop relaying: rounds in progress finish (their rows commit as sent), the idle
        workers end at once; then, with ``final_round``, one last round publishes what the
        service committed until now (repeated while it finds full batches), so that a
        stopped replica leaves nothing unsent that the broker could take. Within
        ``timeout`` seconds: a round cut off rolls back, its rows stay unsent for the next
        relay (a copy the broker already has is absorbed by the consumer's inbox)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self._stopping = True
        for task in self._tasks:
            if task not in self._in_round:
                task.cancel()
        tasks, self._tasks = self._tasks, []
        if tasks:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            _, late = await asyncio.wait(tasks, timeout=remaining)
            await cancel_and_wait(*late)
            await asyncio.gather(*tasks, return_exceptions=True)
        if not final_round:
            return
        flushed = 0
        try:
            async with asyncio.timeout_at(deadline):
                while (sent := await self.relay_once()) > 0:
                    flushed += sent
                    if sent < self._batch_size:
                        break
        except Exception as exc:  # broker or database gone: the rows wait for the next relay
            log.warning("outbox last round failed", table=self._table.name, error=repr(exc))
        log.info("outbox relay stopped", table=self._table.name, last_round=flushed)

    async def _run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        me = cast("asyncio.Task[None]", asyncio.current_task())
        loop = asyncio.get_running_loop()
        while not self._stopping:
            # Cleared before the round (whose SELECT sees every commit notified so far), so
            # that a commit landing during it, with no worker idle, owes the next one.
            self._missed = False
            try:
                self._in_round.add(me)  # stop() lets a round in progress finish
                try:
                    sent = await self.relay_once()
                finally:
                    self._in_round.discard(me)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                log.warning("outbox relay round failed", table=self._table.name, error=repr(exc))
                await asyncio.sleep(backoff.next())
                continue
            if sent >= self._batch_size or self._stopping:
                continue  # a backlog: keep going without waiting (or stopping: end now)
            if not self._missed:
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append(waiter)
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter, self._poll_interval)
                finally:
                    with contextlib.suppress(ValueError):
                        self._idle.remove(waiter)
            if self._linger:
                await asyncio.sleep(self._linger)

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows; return how many were sent. Raises on failure,
        leaving the rows unsent (their transaction rolls back)."""
        t = self._table
        if not await self._bus.is_up():
            # No transaction is opened (no row locked, no connection held) while the
            # broker is away; the runtime wakes the relay once it is back.
            self._select_owed = False
            return 0
        async with self._engine.connect() as conn, conn.begin():
            # Nothing runs between this and the statement's write to the server: a commit
            # notified from now on may land after the SELECT's snapshot, and wakes a worker.
            self._select_owed = False
            rows = (
                await conn.execute(
                    sa.select(
                        t.c.id,
                        t.c.event_id,
                        t.c.event_type,
                        t.c.payload,
                        t.c.request_id,
                        t.c.traceparent,
                    )
                    .where(t.c.published_at.is_(None))
                    .order_by(t.c.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            self.batch_sizes[len(rows)] += 1
            # Bounded: a broker that stops answering mid-round must not keep these rows
            # locked and this connection taken; the rows stay unsent and go next round.
            events = [
                Event(
                    name=r.event_type,
                    data=orjson.loads(r.payload),
                    id=r.event_id,
                    request_id=r.request_id,
                    traceparent=r.traceparent,
                )
                for r in rows
            ]
            async with asyncio.timeout(self._publish_timeout):
                if self._tracer is None:
                    await self._bus.publish(events)
                else:
                    with self._tracer.batch_span(
                        "outbox publish",
                        [e.traceparent for e in events],
                        kind="PRODUCER",
                        attributes={
                            "messaging.operation.type": "send",
                            "messaging.batch.message_count": len(events),
                            "orderstack.outbox": t.name,
                        },
                    ):
                        await self._bus.publish(events)
            size = slots(len(rows))
            params = filled("id", [r.id for r in rows], size)
            params["sent_at"] = utcnow()
            await conn.execute(_mark_sent(t, size), params)
        self.published += len(rows)
        self.published_by_event.update(r.event_type for r in rows)
        return len(rows)

    async def unsent(self) -> tuple[int, datetime | None]:
        """How many rows wait to be sent, and when the oldest of them was written (None
        when none waits), in one query on the unsent index; takes no lock."""
        t = self._table
        oldest = (
            sa.select(t.c.created_at)
            .where(t.c.published_at.is_(None))
            .order_by(t.c.id)
            .limit(1)
            .scalar_subquery()
        )
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(sa.func.count(), oldest)
                    .select_from(t)
                    .where(t.c.published_at.is_(None))
                )
            ).one()
        return int(row[0] or 0), row[1]

    async def backlog(self) -> int:
        t = self._table
        async with self._engine.connect() as conn:
            count = await conn.scalar(
                sa.select(sa.func.count()).select_from(t).where(t.c.published_at.is_(None))
            )
        return int(count or 0)

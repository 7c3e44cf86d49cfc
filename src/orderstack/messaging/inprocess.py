"""Local adapter of the bus port, for both services in one process (embedded default).

It follows the broker's semantics closely enough that the same consumer code runs on it:
topic routing to queues, encoded bodies, a prefetch window, ack / dead-letter.

Messages are kept in a SQLite file of their own (``path``), written before ``publish``
returns: the relay marks an outbox row sent only once its message is on disk, and a message
leaves the file only when its consumer acknowledges it, after the consumer's own commit. So
a Ctrl-C or a kill -9 of ``orderstack dev`` loses nothing: on the next start every message
still in the file is delivered again, and the consumers' inbox absorbs the ones already
applied. Without a path the file is a temporary one, removed on close (tests): same code,
no durability across processes.

Who published: only this process publishes here, as one user, ``LOCAL_USER``; each message
keeps the user it was put there by (``publish_raw`` can give another, or none, as a forger
on a broker would), and the consumer checks it as it checks RabbitMQ's ``user_id``
(messaging/trust.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.messaging.bus import DeadLetter, Delivery, OnDelivery, PublishError, ack_each
from orderstack.messaging.envelope import Event, encode, origin_headers
from orderstack.messaging.topology import ALL_QUEUES, QueueSpec
from orderstack.messaging.trust import PublisherTrust
from orderstack.periodic import cancel_and_wait, raise_if_cancelled
from orderstack.storage.engine import create_engine

log = structlog.get_logger(__name__)

_metadata = sa.MetaData()
# AUTOINCREMENT: ids are never reused, so a consumer's read position (the last id handed
# out) never skips a message published after a higher one was acknowledged and deleted.
_messages = sa.Table(
    "bus_messages",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(128), nullable=False),
    sa.Column("message_id", sa.String(128), nullable=True),
    sa.Column("routing_key", sa.String(128), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    # The message's headers as a JSON object (x-request-id, traceparent), or NULL. Added
    # to a file written by an older version when it is opened (``_add_missing_columns``).
    sa.Column("headers", sa.Text, nullable=True),
    sa.Column("dead", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.Text, nullable=True),
    # The user that put it there (LOCAL_USER for this bus's own publishes), or NULL.
    sa.Column("user_id", sa.String(128), nullable=True),
    sa.Index("ix_bus_messages_queue", "queue", "dead", "id"),
    sqlite_autoincrement=True,
)

# A consumer with nothing to do still looks at its queue this often, so that a message put
# there by another process (``orderstack dlq replay``) is found without a wake-up.
IDLE_POLL_SECONDS = 1.0
# The user both services publish as on the embedded bus (the AMQP user_id's counterpart).
LOCAL_USER = "orderstack-local"
# Acknowledged messages are deleted in batches, at most this long after their ack.
ACK_FLUSH_SECONDS = 0.01


@dataclass(eq=False)
class _Queue:
    name: str
    prefetch: int
    cursor: int = 0  # the highest id handed out; it only moves forward
    in_flight: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)  # acknowledged, not yet deleted
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)


class _LocalDelivery:
    __slots__ = (
        "_bus",
        "_queue",
        "_row_id",
        "_settled",
        "body",
        "headers",
        "message_id",
        "routing_key",
        "user_id",
    )

    def __init__(
        self,
        bus: InProcessBus,
        queue: _Queue,
        row_id: int,
        body: bytes,
        message_id: str | None,
        routing_key: str,
        headers: str | None = None,
        user_id: str | None = None,
    ) -> None:
        self._bus, self._queue, self._row_id = bus, queue, row_id
        self._settled = False
        self.body, self.message_id = body, message_id
        self.routing_key: str | None = routing_key
        self.headers: Mapping[str, Any] | None = _headers_of(headers)
        self.user_id = user_id

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError("delivery already settled")
        self._settled = True
        self._queue.in_flight.discard(self._row_id)
        self._queue.room.set()

    async def ack(self) -> None:
        self._settle()
        self._queue.acked.add(self._row_id)
        self._bus._flush_wanted.set()

    async def dead_letter(self, reason: str = "") -> None:
        self._settle()
        await self._bus._mark_dead(self._row_id, reason)


class InProcessBus:
    """The embedded bus, durable when given a file ``path`` (see the module docstring)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._engine: AsyncEngine | None = None
        self._queues: dict[str, _Queue] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pumps: dict[str, asyncio.Task[None]] = {}  # queue name -> its consumer's pump
        self._flush_wanted = asyncio.Event()
        self._started = False
        self.trust = PublisherTrust.shared(LOCAL_USER)  # both services publish as it

    async def start(self) -> None:
        if self._started:
            return
        if self._engine is None:
            path = self._path
            if path is None:
                # The driver may still be closing its files when cleanup runs: never fail on it.
                self._scratch = tempfile.TemporaryDirectory(
                    prefix="orderstack-bus-", ignore_cleanup_errors=True
                )
                path = Path(self._scratch.name) / "bus.db"
            self._engine = create_engine(make_url(f"sqlite+aiosqlite:///{path}"))
            async with self._engine.begin() as conn:
                await conn.run_sync(_metadata.create_all)
                await conn.run_sync(_add_missing_columns)
        self._tasks.append(asyncio.create_task(self._flush_acks(), name="local-bus:acks"))
        self._started = True

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        self._pumps.clear()
        if self._engine is not None:
            with contextlib.suppress(Exception):  # closing: the acks left are redelivered
                await self._delete_acked()
            await self._engine.dispose()
            self._engine = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
        self._queues.clear()
        self._started = False

    def _db(self) -> AsyncEngine:
        if not self._started or self._engine is None:
            raise PublishError("bus not started")
        return self._engine

    async def publish(self, events: Sequence[Event]) -> None:
        """Returns once every message is committed to the file. An event no queue is bound
        to is a broadcast nobody hears."""
        engine = self._db()
        rows = [
            {
                "queue": spec.name,
                "message_id": event.id,
                "routing_key": event.name,
                "body": encode(event),
                "headers": _headers_text(origin_headers(event)),
                "dead": False,
                "user_id": LOCAL_USER,
            }
            for event in events
            for spec in ALL_QUEUES
            if event.name in spec.routing_keys
        ]
        if not rows:
            return
        try:
            async with engine.begin() as conn:
                await conn.execute(_messages.insert(), rows)
        except Exception as exc:
            raise PublishError(f"local bus write failed: {exc!r}") from exc
        self._wake({str(row["queue"]) for row in rows})

    async def publish_raw(
        self,
        queue: str,
        body: bytes,
        message_id: str | None,
        key: str,
        *,
        user_id: str | None = None,
    ) -> None:
        """Put an arbitrary message on a queue (tests use it for malformed input), as
        ``user_id`` (None: none, as a publisher outside our services)."""
        async with self._db().begin() as conn:
            await conn.execute(
                _messages.insert(),
                {
                    "queue": queue,
                    "message_id": message_id,
                    "routing_key": key,
                    "body": body,
                    "user_id": user_id,
                },
            )
        self._wake({queue})

    def _wake(self, queues: set[str]) -> None:
        for name in queues:
            if (queue := self._queues.get(name)) is not None:
                queue.wake.set()

    async def consume(self, queue: QueueSpec, on_delivery: OnDelivery, prefetch: int) -> None:
        self._db()
        state = _Queue(queue.name, prefetch)
        self._queues[queue.name] = state
        pump = asyncio.create_task(self._pump(state, on_delivery), name=f"local-bus:{queue.name}")
        self._pumps[queue.name] = pump
        self._tasks.append(pump)

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        await ack_each(deliveries)

    async def stop_consuming(self, queue: QueueSpec) -> None:
        """Stop the queue's pump; what it handed out can still be settled, the rest stays
        in the file for the next start."""
        pump = self._pumps.pop(queue.name, None)
        await cancel_and_wait(pump)

    async def _pump(self, queue: _Queue, on_delivery: OnDelivery) -> None:
        while True:
            room = queue.prefetch - len(queue.in_flight)
            if room <= 0:
                queue.room.clear()
                await queue.room.wait()
                continue
            queue.wake.clear()
            try:
                handed = await self._hand_out(queue, room, on_delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the file is busy or gone for a moment: try again
                raise_if_cancelled()
                log.warning("local bus read failed", queue=queue.name, error=repr(exc))
                handed = 0
            if handed == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.wake.wait(), IDLE_POLL_SECONDS)

    async def _hand_out(self, queue: _Queue, room: int, on_delivery: OnDelivery) -> int:
        async with self._db().connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        _messages.c.id,
                        _messages.c.message_id,
                        _messages.c.routing_key,
                        _messages.c.body,
                        _messages.c.headers,
                        _messages.c.user_id,
                    )
                    .where(
                        _messages.c.queue == queue.name,
                        _messages.c.dead.is_(False),
                        _messages.c.id > queue.cursor,
                    )
                    .order_by(_messages.c.id)
                    .limit(room)
                )
            ).all()
        handed = 0
        for row in rows:
            queue.cursor = max(queue.cursor, row.id)
            queue.in_flight.add(row.id)
            handed += 1
            await on_delivery(
                _LocalDelivery(
                    self,
                    queue,
                    row.id,
                    row.body,
                    row.message_id,
                    row.routing_key,
                    row.headers,
                    row.user_id,
                )
            )
        return handed

    async def _flush_acks(self) -> None:
        while True:
            await self._flush_wanted.wait()
            await asyncio.sleep(ACK_FLUSH_SECONDS)  # let the acks of a batch gather
            self._flush_wanted.clear()
            try:
                await self._delete_acked()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # kept in ``acked``: the next flush deletes them
                raise_if_cancelled()
                log.warning("local bus ack flush failed", error=repr(exc))
                self._flush_wanted.set()
                await asyncio.sleep(0.5)

    async def _delete_acked(self) -> None:
        done = {queue.name: set(queue.acked) for queue in self._queues.values() if queue.acked}
        ids = [row_id for acked in done.values() for row_id in acked]
        if not ids or self._engine is None:
            return
        async with self._engine.begin() as conn:
            for chunk in _chunks(ids, 500):
                await conn.execute(_messages.delete().where(_messages.c.id.in_(chunk)))
        for name, acked in done.items():
            self._queues[name].acked -= acked

    async def _mark_dead(self, row_id: int, reason: str) -> None:
        async with self._db().begin() as conn:
            await conn.execute(
                _messages.update()
                .where(_messages.c.id == row_id)
                .values(dead=True, reason=reason[:2000] or None)
            )

    async def is_up(self) -> bool:
        return self._started

    async def depth(self, queue: str) -> int:
        """Messages waiting in a queue: neither handed to its consumer nor dead-lettered."""
        async with self._db().connect() as conn:
            stored = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(_messages)
                .where(_messages.c.queue == queue, _messages.c.dead.is_(False))
            )
        state = self._queues.get(queue)
        busy = len(state.in_flight) + len(state.acked) if state else 0
        return int(stored or 0) - busy

    # -- the dead-letter admin port ---------------------------------------------------------

    async def dead_letter_depth(self, queue: str) -> int:
        """Messages dead-lettered from ``queue`` and still kept (for /metrics)."""
        async with self._db().connect() as conn:
            count = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(_messages)
                .where(_messages.c.queue == queue, _messages.c.dead.is_(True))
            )
        return int(count or 0)

    async def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        async with self._db().connect() as conn:
            rows = await conn.execute(
                sa.select(_messages)
                .where(_messages.c.queue == queue, _messages.c.dead.is_(True))
                .order_by(_messages.c.id)
                .limit(limit)
            )
            return [
                DeadLetter(
                    queue=queue,
                    message_id=row.message_id,
                    routing_key=row.routing_key,
                    body=row.body,
                    reason=row.reason,
                    user_id=row.user_id,
                )
                for row in rows
            ]

    async def replay(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Put dead letters back on their queue, keeping their message ids. Each goes back
        as a new row, so a consumer already past its old position still finds it."""
        chosen = self._dead(queue, message_ids)
        async with self._db().begin() as conn:
            rows = (await conn.execute(sa.select(_messages).where(chosen))).all()
            if rows:
                await conn.execute(
                    _messages.insert(),
                    [
                        {
                            "queue": queue,
                            "message_id": r.message_id,
                            "routing_key": r.routing_key,
                            "body": r.body,
                            "headers": r.headers,
                            "dead": False,
                            # As RabbitMQ's replay: the replaying bus's user vouches.
                            "user_id": LOCAL_USER,
                        }
                        for r in rows
                    ],
                )
                await conn.execute(_messages.delete().where(chosen))
        self._wake({queue})
        return len(rows)

    async def purge(self, queue: str, message_ids: Sequence[str] | None) -> int:
        async with self._db().begin() as conn:
            result = await conn.execute(_messages.delete().where(self._dead(queue, message_ids)))
        return int(result.rowcount)

    @staticmethod
    def _dead(queue: str, message_ids: Sequence[str] | None) -> sa.ColumnElement[bool]:
        condition = sa.and_(_messages.c.queue == queue, _messages.c.dead.is_(True))
        if message_ids is not None:
            condition = sa.and_(condition, _messages.c.message_id.in_(list(message_ids)))
        return condition


def _add_missing_columns(conn: sa.Connection) -> None:
    """Columns a file written by an older version lacks (all nullable) are added. Its
    messages were all published by this bus (``publish_raw`` is the tests'): LOCAL_USER's."""
    present = {str(c["name"]) for c in sa.inspect(conn).get_columns(_messages.name)}
    for column in _messages.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {_messages.name} ADD COLUMN {column.name} {kind}"))
    if "user_id" not in present:
        conn.execute(_messages.update().values(user_id=LOCAL_USER))


def _headers_text(headers: Mapping[str, str]) -> str | None:
    return orjson.dumps(dict(headers)).decode() if headers else None


def _headers_of(text: str | None) -> Mapping[str, Any] | None:
    if not text:
        return None
    try:
        headers = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return headers if isinstance(headers, dict) else None


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]

"""Unit of work: one database transaction, with the outbox and inbox of its service.

One rule for who owns a transaction, per kind of use case:

- a request's use case (create, cancel, update, read...) opens its own ``UnitOfWork``
  from the factory its service was given, and commits it (or leaves it: rolled back);
- an event's use case (settle orders, take or give back stock) runs inside the
  consumer's unit of work, which the consumer opens, claims the inbox in and commits with
  the effects (messaging/consumer.py). It takes that unit of work as a ``Transaction``:
  it writes, it registers after-commit steps, and its type has no ``commit`` to call.

Each service names its two: ``OrderUoW`` / ``OrderTransaction`` (orders/service.py),
``ProductUoW`` / ``ProductTransaction`` (products/service.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol, Self

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack.messaging.envelope import Event
from orderstack.messaging.inbox import Inbox
from orderstack.messaging.outbox import OutboxWriter
from orderstack.storage.errors import CommitOutcomeUnknown, is_broken_connection
from orderstack.storage.outcome import commit_started

log = structlog.get_logger(__name__)

AfterCommit = Callable[[], Awaitable[None]]


class Outbox(Protocol):
    """Where a use case writes its events, in its transaction (OutboxWriter, a fake)."""

    async def add(self, events: Sequence[Event]) -> None: ...


class Transaction(Protocol):
    """An open unit of work as an event's use case gets it: it writes in it and registers
    what runs after the commit; the consumer that opened it commits it (see above)."""

    @property
    def outbox(self) -> Outbox: ...

    def after_commit(self, callback: AfterCommit) -> None: ...


class UnitOfWork(Transaction, Protocol):
    """A unit of work a request's use case opens and commits itself: SqlUnitOfWork below,
    or a test fake. ``async with factory() as uow: ...; await uow.commit()``."""

    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    async def commit(self) -> None: ...


class SqlUnitOfWork:
    """``async with uow: ...; await uow.commit()``; leaving without commit rolls back.

    ``on_events_committed`` is called after a commit that wrote outbox rows (it wakes the
    relay). Callbacks given to ``after_commit`` run after the commit, in order; their
    failures are logged, never raised, since the transaction is already durable.
    """

    conn: AsyncConnection
    outbox: OutboxWriter
    inbox: Inbox

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: sa.Table,
        inbox: sa.Table,
        on_events_committed: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._outbox_table, self._inbox_table = outbox, inbox
        self._on_events_committed = on_events_committed
        self._after_commit: list[AfterCommit] = []

    async def __aenter__(self) -> Self:
        self.conn = await self._engine.connect()
        await self.conn.begin()
        self.outbox = OutboxWriter(self.conn, self._outbox_table)
        self.inbox = Inbox(self.conn, self._inbox_table)
        self._bind(self.conn)
        return self

    def _bind(self, conn: AsyncConnection) -> None:
        """Subclasses build their repositories on the connection here."""

    def after_commit(self, callback: AfterCommit) -> None:
        self._after_commit.append(callback)

    async def commit(self) -> None:
        commit_started()  # a request cut from here on may have changed something
        try:
            await self.conn.commit()
        except Exception as exc:
            if is_broken_connection(exc) or isinstance(exc, OSError | TimeoutError):
                raise CommitOutcomeUnknown(repr(exc)) from exc
            raise
        # Cache refreshes run before the relay is woken, so that nobody hears of a change
        # (through its event) before the cache shows it.
        for callback in self._after_commit:
            try:
                await callback()
            except Exception as exc:
                log.warning("after-commit step failed", error=repr(exc))
        self._after_commit.clear()
        if self.outbox.added and self._on_events_committed is not None:
            self._on_events_committed()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.conn.in_transaction():
                await self.conn.rollback()
        except Exception as rollback_error:
            if exc is None:
                raise
            # The connection is likely gone; the original error is the one to report.
            log.debug("rollback failed", error=repr(rollback_error))
        finally:
            await self.conn.close()

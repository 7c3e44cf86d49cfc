"""Bounded growth: sent outbox rows and inbox records are deleted once past their retention.

Each service runs a ``RetentionPruner`` in the background on its own two tables. Rows go in
bounded batches: select up to ``batch_size`` keys of old rows, delete exactly those (the
age condition checked again), commit, pause, repeat until a batch comes back short. No
statement touches more than ``batch_size`` rows, so locks stay short and a backlog of
millions never becomes one huge transaction or undo log; the pause lets the writers in
between (on SQLite they share one connection). The two steps are separate statements
because MySQL refuses ``DELETE ... WHERE id IN (SELECT ... LIMIT n)`` and ``DELETE ...
LIMIT`` is not portable; the form used here runs on MySQL 8, MariaDB, SQLite and PostgreSQL.

Replicas may prune at the same moment: both delete the same keys and the second deletes
nothing, which is harmless.

The inbox's retention must be longer than any redelivery can arrive after the first
delivery (a broker holding messages through a long outage, a dead letter replayed later):
an event redelivered after its record is pruned would be applied a second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.config import Settings
from orderstack.periodic import PeriodicTask
from orderstack.storage.types import utcnow

log = structlog.get_logger(__name__)


async def delete_in_batches(
    engine: AsyncEngine,
    key: sa.Column[object],
    condition: sa.ColumnElement[bool],
    *,
    batch_size: int,
    pause: float = 0.0,
) -> int:
    """Delete the rows of ``key``'s table that match ``condition``, at most ``batch_size``
    per transaction; return how many were deleted. ``condition`` must select a set that only
    shrinks (rows old enough stay old enough), so the loop ends. Safe to run concurrently."""
    table = key.table
    deleted = 0
    while True:
        async with engine.begin() as conn:
            keys = list(
                (await conn.execute(sa.select(key).where(condition).limit(batch_size))).scalars()
            )
            if keys:
                result = await conn.execute(table.delete().where(key.in_(keys), condition))
                deleted += result.rowcount or 0
        if len(keys) < batch_size:
            return deleted
        await asyncio.sleep(pause)


@dataclass(frozen=True)
class Pruned:
    outbox: int
    inbox: int


class RetentionPruner:
    """Prunes one service's sent outbox rows and inbox records, every ``interval`` seconds
    (with jitter, so replicas spread out), in batches of ``batch_size``."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        outbox: sa.Table,
        inbox: sa.Table,
        outbox_retention: timedelta,
        inbox_retention: timedelta,
        batch_size: int = 1000,
        interval: float = 60.0,
        pause: float = 0.05,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine, self._outbox, self._inbox = engine, outbox, inbox
        self._outbox_retention, self._inbox_retention = outbox_retention, inbox_retention
        self._batch_size, self._pause = batch_size, pause
        self._clock = clock
        self._rounds = PeriodicTask(f"pruner:{outbox.name}", self.prune_once, interval, jitter=0.5)
        self.pruned = Pruned(0, 0)  # totals since start, for logs and tests

    async def prune_once(self) -> Pruned:
        """Delete what is past retention now; return how many rows of each table went."""
        now = self._clock()
        outbox, inbox = self._outbox.c, self._inbox.c
        # ``published_at < x`` is false for the unsent rows (NULL): they are never touched.
        sent = await delete_in_batches(
            self._engine,
            outbox.id,
            outbox.published_at < now - self._outbox_retention,
            batch_size=self._batch_size,
            pause=self._pause,
        )
        processed = await delete_in_batches(
            self._engine,
            inbox.event_id,
            inbox.processed_at < now - self._inbox_retention,
            batch_size=self._batch_size,
            pause=self._pause,
        )
        self.pruned = Pruned(self.pruned.outbox + sent, self.pruned.inbox + processed)
        if sent or processed:
            log.info(
                "pruned past retention",
                outbox=self._outbox.name,
                outbox_rows=sent,
                inbox=self._inbox.name,
                inbox_rows=processed,
            )
        return Pruned(sent, processed)

    def start(self) -> None:
        """Prune in the background, every interval; a failed round (the database away) is
        logged and the next one tries again."""
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()


def pruner_from_settings(
    engine: AsyncEngine, outbox: sa.Table, inbox: sa.Table, settings: Settings
) -> RetentionPruner:
    return RetentionPruner(
        engine,
        outbox=outbox,
        inbox=inbox,
        outbox_retention=timedelta(seconds=settings.OUTBOX_RETENTION_SECONDS),
        inbox_retention=timedelta(seconds=settings.INBOX_RETENTION_SECONDS),
        batch_size=settings.PRUNE_BATCH_SIZE,
        interval=settings.PRUNE_INTERVAL_SECONDS,
        pause=settings.PRUNE_PAUSE_SECONDS,
    )

"""Inbox: the ids of events already processed, recorded in the transaction of their effect.

Records are pruned after INBOX_RETENTION_SECONDS (messaging/retention.py); a redelivery
must never come later than that."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from orderstack.messaging.envelope import Event
from orderstack.storage.inserts import insert_rows
from orderstack.storage.slots import filled, in_slots, slots
from orderstack.storage.types import UtcDateTime, utcnow

NO_EVENT = ""  # the event id an unused slot names: no event has it


def inbox_table(metadata: sa.MetaData, prefix: str) -> sa.Table:
    return sa.Table(
        f"{prefix}_inbox",
        metadata,
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("processed_at", UtcDateTime, nullable=False),
        # The pruner finds the records past retention by age (messaging/retention.py).
        sa.Index(f"ix_{prefix}_inbox_processed_at", "processed_at"),
    )


@functools.lru_cache(maxsize=32)
def _claimed(table: sa.Table, size: int) -> sa.Select[tuple[str]]:
    """Which of ``id{i}`` (up to ``size``, storage/slots.py) ``table`` has recorded."""
    return sa.select(table.c.event_id).where(in_slots(table.c.event_id, "id", size))


class Inbox:
    def __init__(self, conn: AsyncConnection, table: sa.Table) -> None:
        self._conn, self._table = conn, table

    async def claim(self, events: Sequence[Event]) -> list[Event]:
        """Record the events not seen before and return them, in order, once each.

        Two replicas claiming the same id at once: the second insert fails on the primary
        key and its whole transaction rolls back, to be retried; the retry sees the id.
        """
        unique: dict[str, Event] = {}
        for event in events:
            unique.setdefault(event.id, event)
        if not unique:
            return []
        size = slots(len(unique))
        seen = set(
            (
                await self._conn.execute(
                    _claimed(self._table, size), filled("id", list(unique), size, NO_EVENT)
                )
            ).scalars()
        )
        fresh = [e for e in unique.values() if e.id not in seen]
        if fresh:
            now = utcnow()
            await insert_rows(
                self._conn,
                self._table,
                [{"event_id": e.id, "event_type": e.name, "processed_at": now} for e in fresh],
            )
        return fresh

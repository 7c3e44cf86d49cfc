"""Orders' status changes as they are committed, for the order-status streams.

Every status change of an order is a row of ``order_status_events``, written in the change's
own transaction (orders/repository.py): its id is the change's event id, and the table, not
this process's memory, is what a stream resumes from. So any replica serves any client: a
change committed by another replica's consumer is read from the table like one of its own.

One reader per process (``StatusEventHub``), not one per stream: while at least one stream
is open, it reads the rows above the highest id it has passed (``horizon``) every
``poll`` seconds (``ORDER_EVENTS_POLL_SECONDS``), by primary key, and wakes the streams,
which filter what it read from memory (the last ``memory`` events) or, when a stream is
further behind (it resumed from an older id), read their own rows from the table by index.
With no stream open, nothing is read.

Ids are taken when a row is inserted but become visible at COMMIT, not necessarily in id
order (two transactions), and a rolled-back transaction leaves its ids unused for good. The
reader passes an id only when every id below it has been read: a missing one is waited for,
up to ``gap`` seconds (``ORDER_EVENTS_GAP_SECONDS``), and the events after it wait with it.
So a client that saw event ``n`` and resumes after ``n`` misses nothing below ``n`` that was
committed within ``gap`` of being written (the cost: a rolled-back transaction holds the
streams back ``gap`` seconds, once). An event committed later than that is in the table (a
GET of the order shows its status) but live streams have passed its id: logged as
``order status event ids passed``. (The first stream a process opens starts the reader at the
highest id then written.) Ids are expected to come one after another: a server that steps
them by more than 1 (MariaDB Galera's ``auto_increment_increment``) would make every step a
missing id, each waited for: not supported.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from orderstack.periodic import cancel_and_wait, raise_if_cancelled

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """An order entered ``status`` at ``at``; ``id`` is the event id (ever increasing)."""

    id: int
    order_id: int
    status: str
    customer_id: str | None
    at: datetime


class StatusEventLog(Protocol):
    """The durable history (``order_status_events``), read outside any transaction."""

    async def last_id(self) -> int:
        """The highest event id written (0: none)."""
        ...

    async def after(
        self,
        after: int,
        *,
        limit: int,
        upto: int | None = None,
        order_id: int | None = None,
        customer_id: str | None = None,
    ) -> Sequence[StatusEvent]:
        """Up to ``limit`` events with ``after`` < id (<= ``upto`` when given), in id
        order, of that order or customer when given."""
        ...


class TooManyStreams(Exception):
    """The process holds its most streams already (``ORDER_EVENT_STREAMS_MAX``)."""


class StatusEventHub:
    """The process's one reader of the history, shared by its streams (module docstring).

    A stream ``open()``\\ s (bounded by ``max_streams``), then loops: ``read(cursor, …)`` the
    events above its cursor up to the horizon, then waits for ``moved()``. The
    reader runs only while a stream is open; ``close()`` (the service stopping) wakes and
    ends every stream."""

    def __init__(
        self,
        history: StatusEventLog,
        *,
        poll: float = 0.1,
        gap: float = 5.0,
        max_streams: int = 1000,
        batch: int = 1000,
        memory: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = history
        self.poll, self.gap, self.max_streams = poll, gap, max_streams
        self._batch, self._memory, self._clock = batch, memory, clock
        # Every id <= horizon has been read (or passed as missing); None: not read yet.
        self.horizon: int | None = None
        # The last events read, in id order: every event in (floor, horizon] is here.
        self._recent: list[StatusEvent] = []
        self._recent_ids: list[int] = []
        self._floor = 0
        # Read above a missing id, waiting for it; and since when (clock) it is missing.
        self._held: dict[int, StatusEvent] = {}
        self._missing_since: tuple[int, float] | None = None
        self._moved = asyncio.Event()  # replaced at each move of the horizon
        self._closed = asyncio.Event()
        self._streams = 0
        self._reader: asyncio.Task[None] | None = None
        self._stop_watch: asyncio.Task[None] | None = None
        self.passed = 0  # ids passed as missing (a rolled-back or late transaction)
        # For /metrics: streams opened and refused (full, or closing), events read by the
        # reader and ids it passed as missing.
        self.stream_counts: Counter[str] = Counter({"opened": 0, "refused": 0})
        self.id_counts: Counter[str] = Counter({"read": 0, "passed": 0})

    # -- streams --------------------------------------------------------------------------

    @property
    def streams(self) -> int:
        return self._streams

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def open(self) -> int:
        """Count a stream in and start the reader; returns the horizon (the stream's
        cursor when it resumes from nothing). Raises TooManyStreams."""
        if self._streams >= self.max_streams or self.closed:
            self.stream_counts["refused"] += 1
            raise TooManyStreams
        self._streams += 1
        self.stream_counts["opened"] += 1
        try:
            if self.horizon is None:
                self.horizon = self._floor = await self._log.last_id()
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read_while_watched())
        except BaseException:
            self._streams -= 1
            raise
        return self.horizon

    def release(self) -> None:
        self._streams -= 1

    def moved(self) -> asyncio.Event:
        """Set when the horizon next moves (take it before ``read``, then wait on it)."""
        return self._moved

    async def read(
        self,
        cursor: int,
        *,
        order_id: int | None = None,
        customer_id: str | None = None,
        limit: int = 500,
    ) -> tuple[list[StatusEvent], int]:
        """The events above ``cursor`` up to the horizon (of that order or customer when
        given), and the cursor after them: from memory when it holds them all, else from
        the table (``limit`` at most; the new cursor then says how far it got)."""
        horizon = self.horizon
        if horizon is None or horizon <= cursor:
            return [], cursor
        if cursor >= self._floor:
            start = bisect.bisect_right(self._recent_ids, cursor)
            found = [
                e
                for e in self._recent[start:]
                if e.id <= horizon
                and (order_id is None or e.order_id == order_id)
                and (customer_id is None or e.customer_id == customer_id)
            ]
            return found, horizon
        rows = list(
            await self._log.after(
                cursor, limit=limit, upto=horizon, order_id=order_id, customer_id=customer_id
            )
        )
        return rows, (rows[-1].id if len(rows) >= limit else horizon)

    def has_room(self) -> bool:
        room = self._streams < self.max_streams and not self.closed
        if not room:
            self.stream_counts["refused"] += 1
        return room

    def close_on(self, stop: asyncio.Event) -> None:
        """Close when ``stop`` is set (the server told to stop: serving.stop_requested);
        watched by one task, set up once."""
        if self._stop_watch is None and not self.closed:

            async def watch() -> None:
                await stop.wait()
                await self.close()

            self._stop_watch = asyncio.create_task(watch())

    def start(self) -> None:
        """Nothing to start: the reader starts with the first stream (a Background)."""

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        """End every stream (they are woken and see ``closed``) and the reader."""
        if self.closed:
            return
        self._closed.set()
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        watch = self._stop_watch
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        await cancel_and_wait(self._reader)

    # -- the reader -----------------------------------------------------------------------

    async def _read_while_watched(self) -> None:
        failures = 0
        while self._streams > 0 and not self.closed:
            try:
                full = await self.read_once()
                failures = 0
            except Exception as exc:  # the database away: the streams wait, then resume
                raise_if_cancelled()
                failures += 1
                if failures == 1:
                    log.warning("order status events unreadable", error=str(exc))
                await asyncio.sleep(min(2.0, self.poll * 2**failures))
                continue
            if not full:
                await asyncio.sleep(self.poll)

    async def read_once(self) -> bool:
        """One read of the table; True when it returned a full batch (read again now)."""
        if self.horizon is None:
            self.horizon = self._floor = await self._log.last_id()
        start = self.horizon
        rows = await self._log.after(self.horizon, limit=self._batch)
        for row in rows:
            self._held[row.id] = row
        ready: list[StatusEvent] = []
        while True:
            next_id = self.horizon + 1
            while next_id in self._held:
                ready.append(self._held.pop(next_id))
                self.horizon = next_id
                next_id += 1
            if not self._held:
                self._missing_since = None
                break
            now = self._clock()
            if self._missing_since is None or self._missing_since[0] != self.horizon:
                self._missing_since = (self.horizon, now)
                break
            if now - self._missing_since[1] < self.gap:
                break
            first = min(self._held)
            log.warning(
                "order status event ids passed",
                ids=f"{self.horizon + 1}-{first - 1}",
                waited_seconds=self.gap,
            )
            self.passed += first - 1 - self.horizon
            self.id_counts["passed"] += first - 1 - self.horizon
            self.horizon = first - 1
            self._missing_since = None
        if ready:
            self.id_counts["read"] += len(ready)
            self._remember(ready)
        if self.horizon != start:
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
        return len(rows) >= self._batch and not self._held

    def _remember(self, events: list[StatusEvent]) -> None:
        self._recent.extend(events)
        self._recent_ids.extend(e.id for e in events)
        if len(self._recent) > 2 * self._memory:
            cut = len(self._recent) - self._memory
            self._floor = self._recent_ids[cut - 1]
            del self._recent[:cut], self._recent_ids[:cut]


__all__ = ["StatusEvent", "StatusEventHub", "StatusEventLog", "TooManyStreams"]

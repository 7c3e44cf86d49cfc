"""Keeps ``product:{id}`` true to the database even when a cache write was lost.

A change commits first and reaches the cache after (``after_commit``): a process killed in
between, or a cache that blinked at that moment, leaves the old entry in place, served until
its TTL. The repair puts every recently changed row back into the cache, version-checked, so
it can only ever move an entry forward:

- at start, every product changed within the cache's TTL (older entries have expired), which
  heals what the previous run of this process left behind;
- then every ``interval`` seconds, the products changed since the previous pass less
  ``FAST_MARGIN`` (a transaction commits within moments of writing ``updated_at``), which
  heals a replica that died and is not coming back, or a cache write that failed;
- and every ``COMMIT_MARGIN``, a pass that reaches back ``COMMIT_MARGIN`` before the
  previous such pass, for a transaction that committed long after it wrote ``updated_at``.

The two windows keep each row's re-reads to five at most per change. One window of
``COMMIT_MARGIN`` every ``interval`` re-read and re-put every row changed in the last minute
at each pass: under 2,000 product writes a second, 13 times the writes' own cache work.

Each pass also checks that the cache still holds what this database's services wrote
(``check_cache``). A cache server that restarted from an older snapshot, or a replica that
took over lagging behind, hands back entries older than their rows, however long ago
those rows changed; the marker (cache/port.py) names the server it was last checked on,
so a pass notices the change. It then marks the cache ``repairing`` (readers trust no
entry and read the rows), corrects every cached entry from every row, page by page along
the primary key (``full_repair``), and marks it checked again. No entry older than its row
is served longer than one interval after such a restart, however long the full repair
takes; its cost is one read of the products table (``PAGE`` rows per query) and one cache
call per page.

Every pass re-reads the database's epoch too, so a database replaced under a running
service (a reset, ``migrate down`` to base and up) has its entries stamped and read with
the new epoch within one interval, and the marker says so to the other readers.

Every replica runs it; the version check makes their writes commute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from orderstack.cache.port import CachedProduct, CacheMarker, ProductCache
from orderstack.periodic import PeriodicTask
from orderstack.products.caching import DatabaseEpoch
from orderstack.storage.types import utcnow

log = structlog.get_logger(__name__)

PAGE = 500
# A transaction writes ``updated_at`` when its statement runs and commits later: almost
# always within FAST_MARGIN; bounded by the statement and lock timeouts and the commit,
# well inside COMMIT_MARGIN.
FAST_MARGIN = timedelta(seconds=5)
COMMIT_MARGIN = timedelta(seconds=60)


class ChangedProducts(Protocol):
    async def __call__(
        self, since: datetime | None, after_id: int, limit: int
    ) -> list[CachedProduct]:
        """Entries of the products changed at or after ``since`` (None: all of them), by
        id above ``after_id``, at most ``limit``."""


class CacheUnreachable(RuntimeError):
    """The cache did not answer: the pass is tried again, with its window, next time."""


class CacheRepair:
    def __init__(
        self,
        changed: ChangedProducts,
        cache: ProductCache,
        epoch: DatabaseEpoch,
        *,
        ttl: timedelta,
        interval: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``cache``: the shared cache (the entries are stamped with ``epoch`` here)."""
        self._changed, self._cache, self._epoch = changed, cache, epoch
        self._ttl, self._clock = ttl, clock
        self._since: datetime | None = None  # where the next pass starts; None: at start
        self._slow_since: datetime | None = None  # where the next slow pass starts
        self._slow_due: datetime | None = None  # when the next slow pass is due
        self._rounds = PeriodicTask("cache-repair", self.run_once, interval, run_at_start=True)
        self.repaired = 0
        self.full_repairs = 0
        # The cache server this process last saw this database's entries checked on (by a
        # full repair, or a marker of its epoch): None until then.
        self._checked_on: str | None = None

    async def repair(self, since: datetime | None, *, replace_only: bool = False) -> int:
        """Put the entries of every product changed since ``since`` (None: of every
        product), stamped with the database's epoch, version-checked; return how many were
        read. ``replace_only``: correct cached entries only, add none."""
        epoch = await self._epoch.current()
        after_id, count = 0, 0
        while True:
            entries = await self._changed(since, after_id, PAGE)
            if entries:
                await self._cache.put(
                    *(replace(entry, epoch=epoch) for entry in entries), replace_only=replace_only
                )
                count += len(entries)
                after_id = entries[-1].id
            if len(entries) < PAGE:
                break
        self.repaired += count
        return count

    async def full_repair(self, epoch: str, server: str) -> int:
        """Mark the cache ``repairing`` (no reader trusts an entry meanwhile), correct every
        cached entry from its row, then mark it checked on ``server``. A repair cut short
        leaves the mark: the next pass, of any replica, does it again."""
        await self._cache.set_marker(CacheMarker(epoch, server, repairing=True))
        count = await self.repair(None, replace_only=True)
        await self._cache.set_marker(CacheMarker(epoch, server))
        self.full_repairs += 1
        self._checked_on = server
        return count

    async def check_cache(self, epoch: str) -> None:
        """Compare the cache's server and marker with what this database's services last
        published; after a restart, a failover, a lost marker or a repair cut short, do a
        full repair. A marker of another epoch on the same server (another database's
        service writing into this cache, or this database replaced) is taken over: the
        entries are all epoch-checked, so none needs correcting; unless this process has
        not seen its entries checked on that server yet (the other service may have been
        first to publish after a restart from an older snapshot): then a full repair."""
        server = await self._cache.server_id()
        if server is None:
            raise CacheUnreachable("cache unreachable: its entries are checked once it is back")
        marker = await self._cache.marker()
        if marker is None:
            reason = "no marker"  # a new or flushed cache, or one restored from before it
        elif marker.server != server:
            reason = "cache server changed"  # a restart (maybe from a snapshot), a failover
        elif marker.repairing:
            reason = "full repair unfinished"  # a replica's, cut short or still running
        elif marker.epoch != epoch and self._checked_on != server:
            reason = "another database's marker on a server not checked yet"
        else:
            reason = None
        if reason is not None:
            count = await self.full_repair(epoch, server)
            log.info("cache entries checked against every product", reason=reason, read=count)
        elif marker is not None and marker.epoch != epoch:
            log.warning(
                "the cache's marker named another product database: taken over",
                epoch=epoch,
                previous=marker.epoch,
            )
            await self._cache.set_marker(CacheMarker(epoch, server))
        else:
            self._checked_on = server  # our marker, checked on this server

    def start(self) -> None:
        """Repair at once (everything changed within the TTL), then every interval (what
        changed since the previous pass). A failed pass is logged; the next one covers its
        window too."""
        self._since = None
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

    def window(self) -> datetime:
        """Where the pass starting now reads from (and note what the next ones will)."""
        started = self._clock()
        if self._since is None or self._slow_since is None or self._slow_due is None:
            since = started - self._ttl  # at start: everything the cache may still hold
            self._slow_since, self._slow_due = since, started
        else:
            since = self._since
        if started >= self._slow_due:
            since = min(since, self._slow_since)
            self._slow_since, self._slow_due = started - COMMIT_MARGIN, started + COMMIT_MARGIN
        self._since = started - FAST_MARGIN
        return since

    async def run_once(self) -> None:
        """One pass: re-read the epoch, check the cache (``check_cache``), put back what
        changed in this pass's window. Raises what failed; the next pass covers the window
        again."""
        epoch = await self._epoch.reread()
        since = self.window()
        try:
            await self.check_cache(epoch)
            await self.repair(since)
        except Exception:
            # This window again next time: the next pass reads from the earlier start.
            self._since = min(self._since or since, since)
            raise

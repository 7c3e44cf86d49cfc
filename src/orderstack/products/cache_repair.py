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

Every replica runs it; the version check makes their writes commute.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from orderstack.cache.port import CachedProduct, ProductCache
from orderstack.periodic import PeriodicTask
from orderstack.storage.types import utcnow

PAGE = 500
# A transaction writes ``updated_at`` when its statement runs and commits later: almost
# always within FAST_MARGIN; bounded by the statement and lock timeouts and the commit,
# well inside COMMIT_MARGIN.
FAST_MARGIN = timedelta(seconds=5)
COMMIT_MARGIN = timedelta(seconds=60)


class ChangedProducts(Protocol):
    async def __call__(self, since: datetime, after_id: int, limit: int) -> list[CachedProduct]: ...


class CacheRepair:
    def __init__(
        self,
        changed: ChangedProducts,
        cache: ProductCache,
        *,
        ttl: timedelta,
        interval: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._changed, self._cache = changed, cache
        self._ttl, self._clock = ttl, clock
        self._since: datetime | None = None  # where the next pass starts; None: at start
        self._slow_since: datetime | None = None  # where the next slow pass starts
        self._slow_due: datetime | None = None  # when the next slow pass is due
        self._rounds = PeriodicTask("cache-repair", self._pass, interval, run_at_start=True)
        self.repaired = 0

    async def repair(self, since: datetime) -> int:
        """Put the entries of every product changed since ``since``; return how many."""
        after_id, count = 0, 0
        while True:
            entries = await self._changed(since, after_id, PAGE)
            if entries:
                await self._cache.put(*entries)
                count += len(entries)
                after_id = entries[-1].id
            if len(entries) < PAGE:
                break
        self.repaired += count
        return count

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

    async def _pass(self) -> None:
        since = self.window()
        try:
            await self.repair(since)
        except Exception:
            # This window again next time: the next pass reads from the earlier start.
            self._since = min(self._since or since, since)
            raise

"""Keeps ``product:{id}`` true to the database even when a cache write was lost.

A change commits first and reaches the cache after (``after_commit``): a process killed in
between, or a cache that blinked at that moment, leaves the old entry in place, served until
its TTL. The repair puts every recently changed row back into the cache, version-checked, so
it can only ever move an entry forward:

- at start, every product changed within the cache's TTL (older entries have expired), which
  heals what the previous run of this process left behind;
- then every ``interval`` seconds, the products changed since the previous pass (less a
  margin for transactions that commit a while after they wrote ``updated_at``), which heals
  a replica that died and is not coming back, or a cache write that failed.

Every replica runs it; the version check makes their writes commute.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from orderstack.cache.port import CachedProduct, ProductCache
from orderstack.storage.types import utcnow

log = structlog.get_logger(__name__)

PAGE = 500
# A transaction writes ``updated_at`` when its statement runs and commits later: bounded by
# the statement timeout and the commit, well inside this margin.
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
        self._ttl, self._interval, self._clock = ttl, interval, clock
        self._task: asyncio.Task[None] | None = None
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
        self._task = asyncio.create_task(self._run(), name="cache-repair")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        since = self._clock() - self._ttl
        while True:
            started = self._clock()
            try:
                await self.repair(since)
                since = started - COMMIT_MARGIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next pass covers this one's window too
                log.warning("cache repair pass failed", error=repr(exc))
            await asyncio.sleep(self._interval)

"""Batching of concurrent calls: group commit, and coalesced reads.

Each caller submits one item and waits for its own result. Items that arrive while a
batch is being handled queue up and go together in the next one: under load a hundred
orders cost one transaction (a few statements and one log flush) instead of a hundred,
and a hundred cache lookups one round trip. A lone item goes at once, without waiting
for company.

A failed batch: a transient failure (database gone, deadlock) is every caller's answer,
since each alone would meet it too; any other failure (one item's unique key, say) splits
the batch, so that only the item at fault fails, and the others are written alone.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from orderstack.storage.errors import is_transient
from orderstack.storage.outcome import commit_started, current_outcome
from orderstack.storage.retry import retry_on_broken_connection

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 200,
        writers: int = 2,
        commits: bool = False,
    ) -> None:
        """``write`` handles a batch (stores it in one transaction, say) and returns a result
        per item, in order. Up to ``writers`` batches are in flight at once (one fills while
        another is handled). ``commits``: ``write`` commits what it is given, so a caller
        that gives up once its item is being written may have changed something
        (storage/outcome.py); one that gives up before is dropped unwritten."""
        self._write = write
        self._commits = commits
        self._max_batch, self._writers = max_batch, writers
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        # Counted by the writers themselves, not by their tasks' done-callbacks: those run a
        # loop turn after a writer has stopped, and an item submitted in that turn would
        # see a writer that no longer writes, and wait for ever.
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()  # strong references, for the GC
        # Batches handed to ``write`` by their size (a split batch's singles counted too):
        # read by /metrics as batch_size{stage}.
        self.batch_sizes: Counter[int] = Counter()

    async def submit(self, item: T) -> R:
        """Write ``item`` and return its result; raises what writing it raised."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._running < self._writers:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await future
        except asyncio.CancelledError:
            # The caller gave up (its deadline, or its client went away). Still waiting:
            # the writers skip it (a done future), nothing is written. Taken: its batch is
            # on its way to COMMIT, and may land.
            if self._commits and not any(f is future for _, f in self._waiting):
                commit_started()
            raise

    async def _drain(self) -> None:
        # This task writes for many requests: none of their outcomes is its own (the task
        # began in a copy of its first caller's context).
        current_outcome().set(None)
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                batch = [(item, f) for item, f in batch if not f.done()]  # callers gone
                if batch:
                    await self._write_batch(batch)
        finally:
            # No await between the last look at the queue and this: a later submit sees it.
            self._running -= 1

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        self.batch_sizes[len(items)] += 1
        try:
            # A pooled connection the server had dropped (a restart, KILL, a timeout): nothing
            # was kept, so once more on a fresh one, rather than a 503.
            results = await retry_on_broken_connection(lambda: self._write(items))
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or is_transient(exc):
                for _, future in batch:
                    _settle(future, exc=exc)
                return
            for single in batch:
                await self._write_batch([single])
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)


def _settle(
    future: asyncio.Future[R], *, result: R | None = None, exc: Exception | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]

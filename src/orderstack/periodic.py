"""Background work done again every few seconds, for as long as a service runs, and how
any background task is stopped.

A round that fails is logged and the next round tries again: the work these tasks do
(pruning, resending, repairing) is always safe to repeat, and a database or cache that is
away for a moment must not stop it for good.

A cancel can be lost: Python 3.11's ``asyncio.wait_for`` drops one that lands as its inner
await completes, and a database driver can turn one that lands mid-query into a connection
error, which a loop that retries on errors then survives. A stop that cancels once and
waits can so wait for ever; ``cancel_and_wait`` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# How long a stop waits for a cancelled task before cancelling it again.
CANCEL_AGAIN_SECONDS = 0.1


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel the tasks and return once each has ended, cancelling again every
    ``CANCEL_AGAIN_SECONDS`` any that swallowed a cancel. What they raised is retrieved
    (never logged as unretrieved) and not re-raised; ``None`` entries are skipped."""
    started = [task for task in tasks if task is not None]
    running = {task for task in started if not task.done()}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=CANCEL_AGAIN_SECONDS)
    for task in started:
        if not task.cancelled():
            task.exception()


def raise_if_cancelled() -> None:
    """In a loop that retries on errors: re-raise a cancel of the running task that an
    error replaced (a cancel lost that way leaves the task's ``cancelling()`` count up), so
    that the loop ends even when its owner cancels it only once (asyncio.Runner does)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class PeriodicTask:
    """Runs ``step`` every ``interval`` seconds between ``start`` and ``stop``.

    ``jitter`` (0 to 1) shortens each wait by up to that fraction, at random, so that
    replicas started together spread out. ``run_at_start`` runs the first round at once
    instead of after the first wait. A round that raises is logged, never re-raised.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        interval: float,
        *,
        jitter: float = 0.0,
        run_at_start: bool = False,
    ) -> None:
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, not {jitter}")
        self.name = name
        self._step, self._interval = step, interval
        self._jitter, self._run_at_start = jitter, run_at_start
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the rounds in the background; a second call while running does nothing."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the rounds, waiting for a round in progress to be cancelled; idempotent."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def _wait(self) -> float:
        return self._interval * random.uniform(1.0 - self._jitter, 1.0)  # noqa: S311

    async def _run(self) -> None:
        if not self._run_at_start:
            await asyncio.sleep(self._wait())
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round tries again
                raise_if_cancelled()
                log.warning("periodic task failed", task=self.name, error=repr(exc))
            await asyncio.sleep(self._wait())

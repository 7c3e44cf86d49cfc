"""The pending-order sweeper: sends ``order.created`` again for orders pending too long.

An order stays pending for ever if its ``order.created`` or the product service's answer is
lost on the way (a broker that dropped a message, an in-memory queue that died with its
process, a row marked sent that never left). Every ``interval`` seconds the sweeper takes
the orders pending for more than ``pending_for`` seconds, in batches of ``batch``, and
writes a fresh ``order.created`` for each to the outbox (the relay publishes it). The
product service takes stock for an order once and answers a repeated ``order.created`` with
the answer it recorded, so a resend is harmless if nothing was lost.
"""

from __future__ import annotations

import asyncio

import structlog

from orderstack.orders.service import OrderService

log = structlog.get_logger(__name__)


class PendingOrderSweeper:
    def __init__(
        self,
        service: OrderService,
        *,
        interval: float,
        pending_for: float,
        batch: int,
        max_batches_per_round: int = 20,
    ) -> None:
        self._service = service
        self._interval, self._pending_for = interval, pending_for
        self._batch, self._max_batches = batch, max_batches_per_round
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pending-order-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep_once(self) -> int:
        """One round: full batches follow each other, at most ``max_batches_per_round``
        (each its own short transaction). Returns how many orders were sent again.
        Raises what the database raises; what was committed before stays committed."""
        total = 0
        for _ in range(self._max_batches):
            sent = await self._service.resend_stale_pending(self._pending_for, self._batch)
            total += sent
            if sent < self._batch:
                break
        return total

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The next round tries again; an order waits one more interval at most.
                log.warning("pending-order sweep failed", error=repr(exc))

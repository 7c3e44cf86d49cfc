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

from orderstack.orders.service import OrderService
from orderstack.periodic import PeriodicTask


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
        self._pending_for = pending_for
        self._batch, self._max_batches = batch, max_batches_per_round
        self._rounds = PeriodicTask("pending-order-sweeper", self.sweep_once, interval)

    def start(self) -> None:
        """Sweep in the background, every interval. A failed round is logged; the next one
        tries again, so an order waits one more interval at most."""
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

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

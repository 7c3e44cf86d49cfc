"""The pending-order sweeper: sends ``order.created`` again for orders pending too long.

An order stays pending for ever if its ``order.created`` or the product service's answer is
lost on the way (a broker that dropped a message, an in-memory queue that died with its
process, a row marked sent that never left). Every ``interval`` seconds the sweeper takes
the orders due for a resend, in batches of ``batch``, and writes a fresh ``order.created``
for each to the outbox (the relay publishes it). An order is first due ``pending_for``
seconds after its last change; each resend then doubles its wait, up to ``max_wait``
(jittered: ``service.resend_delay``), so that a long product-service outage does not
resend every pending order every ``pending_for``. The product service takes stock for an
order once and answers a repeated ``order.created`` with the answer it recorded, so a
resend is harmless if nothing was lost.

The hold-expiry sweeper (``HoldExpirySweeper``) runs beside it in every replica: every
``interval`` seconds it expires the reserved orders whose hold ended on the database's
clock, in bounded batches (``service.expire_due``: locked rows are skipped, so replicas
take disjoint orders, and a confirm racing it has exactly one winner).
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
        max_wait: float | None = None,
    ) -> None:
        """``max_wait``: the longest wait between two resends of an order; None: no
        backoff, every ``pending_for``."""
        self._service = service
        self._pending_for, self._max_wait = pending_for, max_wait
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
            sent = await self._service.resend_stale_pending(
                self._pending_for, self._batch, max_wait=self._max_wait
            )
            total += sent
            if sent < self._batch:
                break
        return total


class HoldExpirySweeper:
    def __init__(
        self,
        service: OrderService,
        *,
        interval: float,
        batch: int,
        max_batches_per_round: int = 20,
    ) -> None:
        self._service = service
        self._batch, self._max_batches = batch, max_batches_per_round
        self._rounds = PeriodicTask("hold-expiry-sweeper", self.sweep_once, interval)

    def start(self) -> None:
        """Expire due holds in the background, every interval. A failed round is logged;
        the next one tries again, so a hold outlives its end by an interval or two."""
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

    async def sweep_once(self) -> int:
        """One round: full batches follow each other, at most ``max_batches_per_round``
        (each its own short transaction). Returns how many orders expired."""
        total = 0
        for _ in range(self._max_batches):
            expired = await self._service.expire_due(self._batch)
            total += expired
            if expired < self._batch:
                break
        return total

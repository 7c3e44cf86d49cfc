"""Clients confirming their holds while a load and its faults go on, racing the expiry.

Each hold the load placed (``drive_orders``' ``on_held``) is confirmed by its client after
a delay drawn around its ``hold_seconds`` (``early`` to ``late`` times it, from the 201), so
that some confirms come well before the expiry, some at about the moment the expiry sweep
takes the order, and some after: each must have exactly one winner. A confirm that meets a
dead replica, a timeout or a 5xx is retried, as a client would (a confirm is idempotent:
again on a confirmed order, 200).

Final answers a client can act on: 200 ``confirmed``; 409 ``ORDER_EXPIRED`` (too late, the
units went back); 409 ``ORDER_NOT_RESERVED`` (still pending: its units not taken yet, or
failed, or cancelled by its client meanwhile). Anything else is reported as a problem. What
the answers promise is checked against the database afterwards (``confirm_violations``):
an order answered ``confirmed`` is confirmed (or cancelled later by its client), one
answered ``ORDER_EXPIRED`` is expired.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from harness.followups import FollowUps
from harness.invariants import harness_engine
from orderstack.orders.repository import orders

# The name of the check in a chaos run's report.
CONFIRMS = "confirms racing the expiry: each answer is the order's status at rest"
CONFIRMED, EXPIRED, NOT_RESERVED = "200 confirmed", "409 ORDER_EXPIRED", "409 ORDER_NOT_RESERVED"


@dataclass
class ConfirmResult:
    holds: int = 0  # holds the load placed (accepted)
    requests: int = 0  # confirm requests, retries included
    answers: Counter[str] = field(default_factory=Counter)  # final answer of each confirm
    confirmed: set[int] = field(default_factory=set)
    expired: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        answers = ", ".join(f"{k} x{v}" for k, v in sorted(self.answers.items())) or "none"
        return f"holds: {self.holds} placed, confirms racing their expiry: {answers}"


class Confirmer:
    """Confirms every hold it is told about (``submit``, from drive_orders' ``on_held``)
    after ``early`` to ``late`` times its hold; ``finish`` waits for every confirm."""

    def __init__(
        self,
        order_urls: Sequence[str],
        rng: random.Random,
        *,
        early: float = 0.5,
        late: float = 1.5,
        retry_for: float = 30.0,
    ) -> None:
        if not 0 <= early <= late:
            raise ValueError(f"confirm delays must be 0 <= early <= late, got {early}, {late}")
        self.order_urls, self.rng = list(order_urls), rng
        self.early, self.late, self.retry_for = early, late, retry_for
        self.result = ConfirmResult()
        self._follow = FollowUps()

    def delay(self, hold_seconds: int) -> float:
        """Seconds from the 201 to the confirm: around the hold's end, on either side."""
        return hold_seconds * self.rng.uniform(self.early, self.late)

    def submit(self, url: str, order_id: int, hold_seconds: int) -> None:
        self.result.holds += 1
        self._follow.spawn(self._confirm(url, order_id, self.delay(hold_seconds)))

    async def finish(self) -> ConfirmResult:
        await self._follow.drain()
        return self.result

    async def _confirm(self, url: str, order_id: int, delay: float) -> None:
        await asyncio.sleep(delay)
        answer, body = await self._send(url, order_id)
        result = self.result
        result.answers[answer] += 1
        if answer == CONFIRMED:
            result.confirmed.add(order_id)
        elif answer == EXPIRED:
            result.expired.add(order_id)
        elif answer != NOT_RESERVED:
            result.problems.append(f"order {order_id}: confirm's final answer {answer} {body}")

    async def _send(self, url: str, order_id: int) -> tuple[str, dict[str, object]]:
        """POST the confirm, retried (on another replica) past a dead replica, a timeout or
        a 5xx until ``retry_for``; (``200 <status>``, ``409 <code>``, another status or an
        error's name; the JSON body)."""
        answer = await self._follow.post_until_answered(
            url,
            f"/orders/{order_id}/confirm",
            urls=self.order_urls,
            rng=self.rng,
            retry_for=self.retry_for,
            json={"payment_reference": f"chaos-{order_id}"},
        )
        self.result.requests += answer.requests
        if answer.status is None:
            return answer.outcome, {}
        body = answer.body
        what = body.get("status") if answer.status == 200 else body.get("code")
        return f"{answer.status} {what}", body


def confirm_violations(result: ConfirmResult, statuses: Mapping[int, str]) -> list[str]:
    """What the confirms' answers promise, against each order's status at rest
    (``statuses``: order id -> status): ``confirmed`` stays confirmed unless its client
    cancelled it; ``ORDER_EXPIRED`` is expired; and the answers' own problems."""
    found = list(result.problems)
    for order_id in sorted(result.confirmed):
        if statuses.get(order_id) not in ("confirmed", "cancelled"):
            found.append(f"order {order_id}: confirm answered 200, now {statuses.get(order_id)}")
    for order_id in sorted(result.expired):
        if statuses.get(order_id) != "expired":
            found.append(
                f"order {order_id}: confirm answered ORDER_EXPIRED, now {statuses.get(order_id)}"
            )
    both = result.confirmed & result.expired
    found += [f"order {i}: confirmed and expired both answered" for i in sorted(both)]
    return found


async def order_statuses(database_url: str, order_ids: Sequence[int]) -> dict[int, str]:
    """Each of ``order_ids``' status now (in chunks: an IN list of every order of a run)."""
    engine = harness_engine(database_url)
    statuses: dict[int, str] = {}
    try:
        async with engine.connect() as conn:
            ids = sorted(set(order_ids))
            for start in range(0, len(ids), 5000):
                chunk = ids[start : start + 5000]
                rows = await conn.execute(
                    sa.select(orders.c.id, orders.c.status).where(orders.c.id.in_(chunk))
                )
                statuses.update({int(i): str(status) for i, status in rows})
    finally:
        await engine.dispose()
    return statuses


async def wait_holds_ended(database_url: str, timeout: float) -> int:
    """Wait until no order is ``reserved`` (each confirmed, or expired by the sweep), so
    that the checks at rest do not race an expiry; the orders still reserved at
    ``timeout`` (0: none)."""
    engine = harness_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            async with engine.connect() as conn:
                left = int(
                    await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(orders)
                        .where(orders.c.status == "reserved")
                    )
                    or 0
                )
            if not left or time.monotonic() > deadline:
                return left
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()

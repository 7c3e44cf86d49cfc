"""Clients cancelling orders while a load and its faults go on.

A share of the accepted orders is cancelled, the way users do it: some right after the
201 (the order is most likely still pending), some once the client has seen the order
settle (a confirmed one must come back cancelled with its units; a failed one is refused
with 409 ORDER_NOT_CANCELLABLE), and some twice at once (through two replicas
where there are). A cancel
that meets a dead replica, a timeout or a 5xx is retried, as a client would: a cancel is
idempotent (again on a cancelled order: 200, nothing changes).

A final answer other than 200 or 409 (another status, or none within the retries) is
reported as a problem of its own.

What the answers promise is checked against the database afterwards
(harness.invariants.cancel_violations): every order answered 200 is cancelled, every
order refused 409 is failed, and each order's status is its stock reservation's outcome.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

from harness.followups import FollowUps

RIGHT_AFTER_201 = "right after the 201"
AFTER_CONFIRMED = "after the client saw it confirmed"
AFTER_FAILED = "after the client saw it failed"
NEVER_SETTLED = "still pending when the client gave up waiting"


@dataclass
class CancelResult:
    orders: int = 0  # orders the clients cancelled (a duplicated cancel counts once)
    requests: int = 0  # cancel requests, duplicates and retries included
    duplicated: int = 0  # orders cancelled twice at once through two replicas
    answers: Counter[str] = field(default_factory=Counter)  # final answer of each cancel
    when: Counter[str] = field(default_factory=Counter)  # at what point orders were cancelled
    cancelled: set[int] = field(default_factory=set)  # orders answered 200 cancelled
    refused: set[int] = field(default_factory=set)  # orders answered 409 (not cancellable)
    units_after_confirmed: int = 0  # units of orders cancelled after the client saw confirmed
    problems: list[str] = field(default_factory=list)  # answers that break the API's promise

    def render(self) -> str:
        answers = ", ".join(f"{k} x{v}" for k, v in sorted(self.answers.items())) or "none"
        when = ", ".join(f"{v} {k}" for k, v in self.when.items()) or "none"
        return (
            f"cancels: {self.orders} orders ({self.duplicated} of them twice at once, through "
            f"two replicas where there are), {self.requests} requests with retries; final "
            f"answers: {answers}\n"
            f"  cancelled {when}; units given back for orders seen confirmed: "
            f"{self.units_after_confirmed}"
        )


class Canceller:
    """Cancels a ``fraction`` of the orders it is told about (``submit``, from drive_orders'
    ``on_accepted``); ``finish`` waits for every cancel and returns what they got."""

    def __init__(
        self,
        order_urls: Sequence[str],
        fraction: float,
        rng: random.Random,
        *,
        retry_for: float = 30.0,
        settle_wait: float = 60.0,
    ) -> None:
        self.order_urls, self.fraction, self.rng = list(order_urls), fraction, rng
        self.retry_for, self.settle_wait = retry_for, settle_wait
        self.result = CancelResult()
        self._follow = FollowUps()

    def submit(self, url: str, order_id: int, quantity: int) -> None:
        if self.fraction <= 0 or self.rng.random() >= self.fraction:
            return
        right_away = self.rng.random() < 0.4
        twice = self.rng.random() < 0.25
        self._follow.spawn(self._cancel(url, order_id, quantity, right_away, twice))

    async def finish(self) -> CancelResult:
        await self._follow.drain()
        return self.result

    async def _cancel(
        self, url: str, order_id: int, quantity: int, right_away: bool, twice: bool
    ) -> None:
        result = self.result
        result.orders += 1
        seen = "pending" if right_away else await self._wait_settled(url, order_id)
        when = {
            "pending": RIGHT_AFTER_201 if right_away else NEVER_SETTLED,
            "confirmed": AFTER_CONFIRMED,
            "failed": AFTER_FAILED,
        }.get(seen, f"after the client saw it {seen}")
        result.when[when] += 1
        urls = [url]
        if twice:
            result.duplicated += 1
            urls.append(self.rng.choice([u for u in self.order_urls if u != url] or [url]))
        answers = await asyncio.gather(*(self._send(u, order_id) for u in urls))
        for status, body in answers:
            result.answers[status] += 1
            if status == "200" and body.get("status") == "cancelled":
                result.cancelled.add(order_id)
            elif status == "409" and body.get("code") == "ORDER_NOT_CANCELLABLE":
                result.refused.add(order_id)
            elif status in ("200", "409"):
                result.problems.append(f"order {order_id}: cancel answered {status} {body}")
            else:
                # Anything else is no answer a client can act on: a 404 for an order it
                # was given, a 4xx, or no answer (5xx, timeouts) for ``retry_for`` seconds.
                result.problems.append(
                    f"order {order_id}: cancel's final answer {status} {body or ''}".rstrip()
                )
        if seen == "confirmed" and order_id in result.cancelled:
            result.units_after_confirmed += quantity
        if seen == "confirmed" and order_id in result.refused:
            result.problems.append(f"order {order_id} was confirmed, its cancel refused (409)")
        if seen == "failed" and order_id in result.cancelled:
            result.problems.append(f"order {order_id} had failed, its cancel answered 200")
        if order_id in result.cancelled and order_id in result.refused:
            result.problems.append(f"order {order_id}: one cancel answered 200, another 409")

    async def _wait_settled(self, url: str, order_id: int) -> str:
        """Poll the order as a client would until it leaves ``pending`` (bounded)."""
        deadline = time.monotonic() + self.settle_wait
        status = "pending"
        while status == "pending" and time.monotonic() < deadline:
            await asyncio.sleep(self.rng.uniform(0.2, 0.6))
            try:
                async with self._follow.session.get(f"{url}/orders/{order_id}") as response:
                    if response.status == 200:
                        status = orjson.loads(await response.read())["status"]
            except (aiohttp.ClientError, TimeoutError):
                url = self.rng.choice(self.order_urls)  # that replica is away: another
        return status

    async def _send(self, url: str, order_id: int) -> tuple[str, dict[str, object]]:
        """POST the cancel; a dead replica, a timeout or a 5xx is retried (on another
        replica) until ``retry_for`` has passed. (final status or error name, JSON body)"""
        answer = await self._follow.post_until_answered(
            url,
            f"/orders/{order_id}/cancel",
            urls=self.order_urls,
            rng=self.rng,
            retry_for=self.retry_for,
        )
        self.result.requests += answer.requests
        return answer.outcome, answer.body

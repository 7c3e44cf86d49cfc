"""Admission under overload: refuse at the door what cannot be served in time.

A fixed cap on requests in flight never sheds in practice (a load generator opens fewer
connections than the cap) and, when it does, it sheds by count, not by harm done. Two
controllers decide by delay instead; both are pure (a clock comes in) and cheap (no lock,
O(1) per request).

``ConcurrencyLimit`` (every request, per process): an AIMD adaptive concurrency limit gated
by a standing-queue test, the shape of Netflix's concurrency-limits AIMD with CoDel's
insight. Each ``interval`` the *fastest* answer served in the interval is compared with
``target`` (and the event loop's lag with a fifth of it: a loop that never idles queues
requests before any app code sees them): a burst makes some answers slow but not the
fastest, a standing queue makes every answer slow (refusals are not timed: their quick
answers would hide the queue). Once that has held for ``burst`` seconds, the limit shrinks
by ``backoff`` per interval; as soon as it does not, it grows back by a step. A request
over the limit is refused at once (503 OVERLOADED, Retry-After), so the admitted ones keep
answering within a bound, the event loop keeps slack for the outbox relay and the
consumers that share it, and clients never queue into a timeout.

``SettleDelayShedder`` (new orders, order service): between processes a loop's slack is
not enough, since intake (order service) and settling (the relay, the product service's
consumer, the database, the broker) share the same cores. It samples the time each order
this process accepted takes to settle (its sojourn in the settling pipeline) and keeps a
drop probability in the manner of PIE (RFC 8033): each interval, raised in proportion to how
far the fastest settle of the interval is past ``target`` and how fast that grows (once
orders have settled late for ``burst`` seconds: PIE's burst allowance), lowered when under
it. New orders are refused at the door with that probability (before their body
is read: a refusal costs little), so intake follows the rate
the pipeline settles at, instead of filling queues that every later order waits behind.
Two seconds with no sample (an outage: no answer comes at all) halve the probability, and
so on: the outbox holds the orders of an outage, and refusing them would only lose business.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class ConcurrencyLimit:
    """How many requests may be in flight now (see the module docstring)."""

    def __init__(
        self,
        *,
        target: float,
        maximum: int,
        minimum: int = 8,
        interval: float = 0.1,
        backoff: float = 0.8,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target, self.maximum, self.minimum = target, maximum, min(minimum, maximum)
        self.interval, self.backoff, self._clock = interval, backoff, clock
        self.burst = burst  # how long a queue must stand before the limit shrinks
        self._standing_since: float | None = None
        self.limit = float(maximum)
        self.in_flight = 0
        self._fastest: float | None = None
        self._worst_lag = 0.0
        self._interval_ends = clock() + interval

    def lagged(self, seconds: float) -> None:
        """The event loop ran a timer ``seconds`` late: a process whose loop never idles
        queues requests before they reach any app code (in the kernel, in the server's
        parser), where no answer time can see them."""
        if seconds > self._worst_lag:
            self._worst_lag = seconds

    def try_acquire(self) -> bool:
        """Take a slot; False (refuse the request) when the limit is reached."""
        if self.in_flight >= int(self.limit):
            return False
        self.in_flight += 1
        return True

    def release(self, took: float, *, served: bool = True) -> None:
        """Give the slot back, with the seconds the request took. ``served``: False for a
        refusal (a 503 from deeper in, say), whose quick answer says nothing of the queue:
        only served requests are timed."""
        self.in_flight -= 1
        if served and (self._fastest is None or took < self._fastest):
            self._fastest = took
        now = self._clock()
        if now < self._interval_ends:
            return
        if self._fastest is None:
            return  # nothing served this interval: no sign either way yet
        if self._fastest > self.target or self._worst_lag > self.target / 5:
            if self._standing_since is None:
                self._standing_since = now
            if now - self._standing_since >= self.burst:  # not a burst: a standing queue
                self.limit = max(self.minimum, self.limit * self.backoff)
        else:
            self._standing_since = None
            self.limit = min(self.maximum, self.limit + max(1.0, self.limit * 0.05))
        self._fastest = None
        self._worst_lag = 0.0
        self._interval_ends = now + self.interval


class SettleDelayShedder:
    """The probability of refusing a new order now (see the module docstring)."""

    ALPHA = 0.125  # weight of how far from target the delay is
    BETA = 0.25  # weight of how fast it grows
    MAX_PROBABILITY = 0.95  # some orders always pass: their settling is the signal
    QUIET_INTERVALS = 4  # intervals with no order settled before that counts as an outage

    def __init__(
        self,
        *,
        target: float,
        interval: float = 0.5,
        burst: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.target, self.interval = target, interval
        # PIE's burst allowance: how long orders must settle late before any is refused
        # (a burst of orders settles late for a moment, and must not be refused for it).
        self.burst = burst
        self._late_since: float | None = None
        self.clock, self._draw = clock, draw  # the clock sojourns are measured on
        self.probability = 0.0
        self._fastest: float | None = None
        self._previous: float | None = None
        self._quiet = 0  # intervals in a row with no order settled
        self._interval_ends = clock() + interval

    def settled(self, sojourn: float) -> None:
        """An order accepted here settled, ``sojourn`` seconds after it was stored."""
        if self._fastest is None or sojourn < self._fastest:
            self._fastest = sojourn
        self._update()

    def admit(self) -> bool:
        """Whether to take a new order now."""
        self._update()
        return self.probability == 0.0 or self._draw() >= self.probability

    def _update(self) -> None:
        now = self.clock()
        if now < self._interval_ends:
            return
        if self._fastest is None:
            self._quiet += 1
            if self._quiet >= self.QUIET_INTERVALS:
                self.probability /= 2  # nothing settles at all: an outage, not a queue
                if self.probability < 0.01:
                    self.probability = 0.0
        else:
            self._quiet = 0
            delay, previous = self._fastest, self._previous
            growth = 0.0 if previous is None else delay - previous
            change = (self.ALPHA * (delay - self.target) + self.BETA * growth) / self.target
            if delay <= self.target:
                self._late_since = None
                change = min(change, 0.0)  # under target: only ever down
            else:
                if self._late_since is None:
                    self._late_since = now
                if now - self._late_since < self.burst:
                    change = min(change, 0.0)  # late for a moment: a burst
            self.probability = min(self.MAX_PROBABILITY, max(0.0, self.probability + change))
            self._previous = delay
        self._fastest = None
        self._interval_ends = now + self.interval


__all__ = ["ConcurrencyLimit", "SettleDelayShedder"]

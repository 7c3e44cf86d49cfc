"""Exponential backoff with full jitter, for every retry loop of the services.

Replicas that failed together (the broker or the database went away under all of them)
must not retry together: each wait is drawn uniformly between zero and the current
ceiling, which doubles after each failure up to ``cap`` ("full jitter").
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float, cap: float) -> None:
        self._base, self._cap = base, cap
        self._ceiling = base

    def next(self) -> float:
        """The next wait, in seconds; raises the ceiling for the one after."""
        wait = random.uniform(0, self._ceiling)  # noqa: S311 - spreading retries, not secrets
        self._ceiling = min(self._ceiling * 2, self._cap)
        return wait

    @property
    def ceiling(self) -> float:
        return self._ceiling

    def reset(self) -> None:
        self._ceiling = self._base

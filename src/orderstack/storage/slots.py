"""Statements built once per size and reused with their parameters.

A statement whose shape follows its batch (a ``CASE`` of a branch per row) costs more to
build, and to key for SQLAlchemy's compiled cache, than to run. Built for a number of
slots instead, the power of two at or above the batch's size, a few statements serve every
batch: each is built once (``functools.lru_cache`` on its builder) and given its values as
parameters, unused slots naming no row (an id of 0: ids start at 1)."""

from __future__ import annotations

NO_ROW = 0  # the id an unused slot names


def slots(count: int) -> int:
    """The power of two at or above ``count`` (1 for 0 or 1)."""
    return 1 << max(0, count - 1).bit_length()


__all__ = ["NO_ROW", "slots"]

"""Statements built once per size and reused with their parameters.

A statement whose shape follows its batch (a ``CASE`` of a branch per row, an ``IN`` list
of its ids) costs more to build, to key for SQLAlchemy's compiled cache and, for an ``IN``
list given as a Python list, to expand into the statement's text at each execution, than to
run. Built for a number of slots instead, the power of two at or above the batch's size, a
few statements serve every batch: each is built once (``functools.lru_cache`` on its
builder) and given its values as parameters, unused slots naming no row (an id of 0: ids
start at 1; an empty string for the inbox's event ids)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

NO_ROW = 0  # the id an unused slot names


def slots(count: int) -> int:
    """The power of two at or above ``count`` (1 for 0 or 1)."""
    return 1 << max(0, count - 1).bit_length()


def in_slots(column: sa.ColumnElement[Any], prefix: str, size: int) -> sa.ColumnElement[bool]:
    """``column IN (:<prefix>0, …, :<prefix><size - 1>)``, parameters of the column's type."""
    return column.in_([sa.bindparam(f"{prefix}{i}", type_=column.type) for i in range(size)])


def filled(prefix: str, values: Sequence[Any], size: int, empty: Any = NO_ROW) -> dict[str, Any]:
    """The parameters of ``in_slots(…, prefix, size)``: ``values``, then ``empty``."""
    count = len(values)
    return {f"{prefix}{i}": values[i] if i < count else empty for i in range(size)}


def one_of(column: sa.ColumnElement[Any], values: Iterable[Any]) -> sa.ColumnElement[bool]:
    """``column IN`` fixed values, each a parameter of its own: a statement built once
    keeps them, where a list would be expanded into its text at every execution."""
    return column.in_([sa.literal(value, column.type) for value in values])


__all__ = ["NO_ROW", "filled", "in_slots", "one_of", "slots"]

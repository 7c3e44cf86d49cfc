"""Inserting a batch of rows and learning each one's id, on every server we run on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection


def returning_supported(conn: AsyncConnection, forced: bool | None) -> bool:
    """Whether to read new ids from ``INSERT … RETURNING``: ``forced`` when given (the
    DB_INSERT_RETURNING setting), else what the server has (MariaDB 10.5+, PostgreSQL and
    SQLite have it, MySQL 8 not)."""
    return conn.dialect.insert_returning if forced is None else forced


async def insert_with_ids(
    conn: AsyncConnection,
    table: sa.Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    returning: bool,
) -> list[int]:
    """Insert ``rows`` into ``table``; their new ids, in the rows' order. With RETURNING,
    one statement. Without it (MySQL 8), one INSERT per row in the same transaction, each id
    read from its own statement: a multi-row INSERT's ids need not be consecutive
    (``innodb_autoinc_lock_mode=2``, MySQL 8's default, interleaves concurrent inserts),
    so they cannot be inferred."""
    if returning:
        result = await conn.execute(
            table.insert().returning(table.c.id, sort_by_parameter_order=True), list(rows)
        )
        return [int(new_id) for new_id in result.scalars()]
    ids = []
    for row in rows:
        result = await conn.execute(table.insert().values(**row))
        ids.append(int(result.inserted_primary_key[0]))  # type: ignore[index]
    return ids

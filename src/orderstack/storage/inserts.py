"""Inserting a batch of rows, learning each one's id or not, on every server we run on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
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


Processor = Callable[[Any], Any] | None


@functools.lru_cache(maxsize=64)
def _driver_insert(
    table: sa.Table, columns: tuple[str, ...], dialect: Dialect
) -> tuple[str, tuple[str, ...], tuple[Processor, ...]]:
    """SQLAlchemy's INSERT of ``columns`` into ``table`` compiled for ``dialect`` once: its
    text in the driver's markers, the columns in the order of its markers, and each one's
    bind processor (its type's conversion to what the driver takes: an aware datetime to
    naive UTC, say). Refuses a table that would fill a column left out from Python (a
    ``default=``): SQLAlchemy's own execution does, the driver would not."""
    for column in table.columns:
        if column.name not in columns and column.default is not None:
            raise ValueError(f"{table.name}.{column.name} has a Python-side default")
    compiled = table.insert().compile(dialect=dialect, column_keys=list(columns))
    order = tuple(compiled.positiontup or ())
    processors = tuple(table.c[name].type.bind_processor(dialect) for name in order)
    return compiled.string, order, processors


async def insert_rows(
    conn: AsyncConnection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``rows`` (each of the same columns) into ``table`` in the connection's
    transaction; their ids are not wanted.

    On MySQL and MariaDB the driver sends them itself (asyncmy's ``executemany``: one
    multi-row INSERT of exactly these rows, as SQLAlchemy's would be), past SQLAlchemy's
    execution of a statement, which costs the service about as much CPU again as the
    driver's round trip, and some microseconds a row: these are the inserts of every
    order (its events, outbox rows, inbox claims, stock reservations). A driver error is
    raised as SQLAlchemy raises it (``IntegrityError``, ``OperationalError``... wrapping the
    driver's, parameters hidden), and a connection lost or cut off mid-statement (a
    cancelled task) is invalidated, as SQLAlchemy does. Elsewhere (PostgreSQL, SQLite),
    SQLAlchemy's executemany."""
    if not rows:
        return
    dialect = conn.dialect
    if dialect.name != "mysql":
        await conn.execute(table.insert(), list(rows))
        return
    sql, order, processors = _driver_insert(table, tuple(rows[0]), dialect)
    params = [
        tuple(
            row[name] if process is None else process(row[name])
            for name, process in zip(order, processors, strict=True)
        )
        for row in rows
    ]
    if not conn.in_transaction():
        await conn.begin()  # the commit that follows is SQLAlchemy's: it must know of one
    fairy = await conn.get_raw_connection()
    driver: Any = fairy.driver_connection
    try:
        async with driver.cursor() as cursor:
            await cursor.executemany(sql, params)
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, fairy.dbapi_connection, None)
        if lost:
            await conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql,
            params,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=dialect,
            ismulti=True,
        ) from exc
    except BaseException:
        # Cut off mid-statement (cancelled): the protocol may be half way through a reply.
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.invalidate())
        raise

"""``insert_rows`` (storage/inserts.py): on MariaDB the driver sends the rows itself, past
SQLAlchemy's execution; what lands, what a failure raises and what becomes of the
connection must be what SQLAlchemy's own INSERT gives, on every database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.storage.errors import is_broken_connection, is_transient
from orderstack.storage.inserts import insert_rows
from orderstack.storage.types import BigId, Money, UtcDateTime
from tests.integration.tables import engine_on, with_tables

_metadata = sa.MetaData()
_rows = sa.Table(
    "insert_rows_probe",
    _metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("price", Money, nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("units", sa.Integer, nullable=False, server_default="1"),
)
_by_hand = sa.Table(
    "insert_rows_by_sqlalchemy",
    _metadata,
    *(
        sa.Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            nullable=c.nullable,
            server_default=c.server_default.arg if c.server_default else None,
        )  # type: ignore[attr-defined]
        for c in _rows.columns
    ),
)


@pytest.fixture(params=["server", "sqlite"])
async def probe(
    request: pytest.FixtureRequest, sandbox: Sandbox, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine on the sandbox's server or a SQLite file, with the empty probe tables."""
    engine = engine_on(request.param, sandbox, tmp_path, pool_size=2)
    async with with_tables(engine, _metadata) as ready:
        yield ready


@pytest.fixture
async def on_server(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on the sandbox's server, with the empty probe tables."""
    engine = engine_on("server", sandbox, tmp_path, pool_size=2)
    async with with_tables(engine, _metadata) as ready:
        yield ready


def _row(key: str, **values: Any) -> dict[str, Any]:
    return {
        "key": key,
        "at": datetime(2026, 12, 5, 21, 0, 0, 123456, UTC),
        "price": None,
        "note": None,
        **values,
    }


async def _keys(engine: AsyncEngine, table: sa.Table = _rows) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(table.c.key, table.c.at, table.c.price, table.c.note, table.c.units).order_by(
                table.c.id
            )
        )
        return [tuple(row) for row in rows]


@pytest.mark.databases("mariadb", "postgresql")
async def test_rows_land_as_sqlalchemys_own_insert_puts_them(probe: AsyncEngine) -> None:
    rows = [
        _row("a"),
        # Another zone: stored in UTC, like any aware datetime.
        _row(
            "b",
            at=datetime(2026, 12, 5, 23, 0, 0, 7, timezone(timedelta(hours=2))),
            price=Decimal("12.30"),
            note="é ünïcode 'quoted' \\ and \"more\"",
        ),
        _row("c", price=Decimal("0.01"), note=""),
    ]
    async with probe.begin() as conn:
        await insert_rows(conn, _rows, rows)
        await conn.execute(_by_hand.insert(), rows)
    landed = await _keys(probe)
    assert landed == await _keys(probe, _by_hand)
    assert [row[0] for row in landed] == ["a", "b", "c"]
    assert landed[1][1] == datetime(2026, 12, 5, 21, 0, 0, 7, UTC)
    assert landed[1][2] == Decimal("12.30")
    assert all(row[4] == 1 for row in landed)  # the server's default for a column left out


@pytest.mark.databases("mariadb", "postgresql")
async def test_rows_outside_a_begun_transaction_are_kept_by_the_commit(
    probe: AsyncEngine,
) -> None:
    async with probe.connect() as conn:
        await insert_rows(conn, _rows, [_row("a")])
        await conn.commit()
    async with probe.connect() as conn:  # the same pooled connection: nothing left open
        await conn.execute(_rows.delete().where(_rows.c.key == "none"))
        await conn.rollback()
    assert [row[0] for row in await _keys(probe)] == ["a"]


@pytest.mark.databases("mariadb", "postgresql")
async def test_a_duplicate_key_is_sqlalchemys_integrity_error_and_nothing_lands(
    probe: AsyncEngine,
) -> None:
    async with probe.begin() as conn:
        await insert_rows(conn, _rows, [_row("a")])
    with pytest.raises(sa.exc.IntegrityError) as caught:
        async with probe.begin() as conn:
            await insert_rows(conn, _rows, [_row("b-9f3e"), _row("a")])
    assert not is_transient(caught.value)
    assert "b-9f3e" not in str(caught.value)  # parameters hidden, as the engine's own
    async with probe.begin() as conn:  # the connection is usable again
        await insert_rows(conn, _rows, [_row("c")])
    assert [row[0] for row in await _keys(probe)] == ["a", "c"]


@pytest.mark.databases("mariadb")
async def test_a_connection_the_server_killed_is_invalidated_and_transient(
    on_server: AsyncEngine,
) -> None:
    probe = on_server
    async with probe.connect() as killer, probe.connect() as victim:
        server_id = int(await victim.scalar(sa.text("SELECT CONNECTION_ID()")) or 0)
        await killer.execute(sa.text(f"KILL CONNECTION {server_id}"))
        await asyncio.sleep(0.2)
        with pytest.raises(sa.exc.DBAPIError) as caught:
            await insert_rows(victim, _rows, [_row("a")])
        assert caught.value.connection_invalidated
        assert victim.invalidated
        assert is_broken_connection(caught.value) and is_transient(caught.value)
    async with probe.begin() as conn:  # a fresh connection takes the next rows
        await insert_rows(conn, _rows, [_row("b")])
    assert [row[0] for row in await _keys(probe)] == ["b"]


@pytest.mark.databases("mariadb")
async def test_an_insert_cancelled_while_it_waits_leaves_no_connection_half_read(
    on_server: AsyncEngine,
) -> None:
    probe = on_server
    async with probe.connect() as holder:
        await holder.begin()
        await insert_rows(holder, _rows, [_row("a")])  # key "a" locked until it ends

        started = asyncio.Event()
        invalidated: list[bool] = []

        async def blocked() -> None:
            async with probe.connect() as conn:
                await conn.begin()
                started.set()
                try:
                    await insert_rows(conn, _rows, [_row("a")])  # waits for the holder
                finally:
                    invalidated.append(conn.invalidated)

        task = asyncio.create_task(blocked())
        await started.wait()
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert invalidated == [True]
        await holder.rollback()
    for key in ("b", "c", "d"):  # every pooled connection answers its own statements
        async with probe.begin() as conn:
            await insert_rows(conn, _rows, [_row(key)])
    assert [row[0] for row in await _keys(probe)] == ["b", "c", "d"]


@pytest.mark.databases("mariadb")
async def test_a_table_filling_a_column_from_python_is_refused_before_anything_is_sent(
    on_server: AsyncEngine,
) -> None:
    """SQLAlchemy's own INSERT fills a ``default=`` column left out; the driver would not,
    so such a table is refused rather than written without it."""
    defaulted = sa.Table(
        "insert_rows_defaulted",
        sa.MetaData(),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("units", sa.Integer, nullable=False, default=1),
    )
    async with on_server.connect() as conn:
        with pytest.raises(ValueError, match="insert_rows_defaulted.units"):
            await insert_rows(conn, defaulted, [{"key": "a"}])

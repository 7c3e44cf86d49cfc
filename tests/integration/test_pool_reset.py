"""The pool rolls back a connection it takes back only when the driver says a transaction
is open (storage/engine.py ``_reset_only_open_transactions``): no ROLLBACK after a
commit, one whenever the connection was used past what the Connection saw."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from harness.sandbox import Sandbox
from orderstack.storage.engine import create_engine
from tests.integration.tables import engine_on, with_tables

_metadata = sa.MetaData()
_probe = sa.Table("pool_reset_probe", _metadata, sa.Column("v", sa.Integer, nullable=False))


@pytest.fixture(params=["server", "sqlite"])
async def one_connection(
    request: pytest.FixtureRequest, sandbox: Sandbox, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine of one pooled connection, on the sandbox's server or a SQLite file, with
    an empty probe table."""
    engine = engine_on(request.param, sandbox, tmp_path, pool_size=1)
    async with with_tables(engine, _metadata) as ready:
        yield ready


async def _rollbacks(engine: AsyncEngine) -> int:
    """ROLLBACKs the pooled connection's session has run (MariaDB, MySQL)."""
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text("SHOW SESSION STATUS LIKE 'Com_rollback'"))).one()
        await conn.commit()
    return int(row[1])


@pytest.mark.databases("mariadb")
async def test_a_committed_transaction_returns_its_connection_without_a_rollback(
    sandbox: Sandbox,
) -> None:
    engine = create_engine(sandbox.engine_url, pool_size=1)
    try:
        before = await _rollbacks(engine)
        for _ in range(5):
            async with engine.begin() as conn:
                await conn.execute(sa.text("SELECT 1"))
        async with engine.connect() as conn:  # ended by an explicit rollback
            await conn.execute(sa.text("SELECT 1"))
            await conn.rollback()
        # SQLAlchemy's default reset sends one more per transaction: 6 + the probe's own.
        assert await _rollbacks(engine) - before == 1
    finally:
        await engine.dispose()


def _insert_behind_the_connections_back(conn: sa.Connection) -> None:
    """A write on the DBAPI connection itself: its transaction is the server's (and the
    driver's), not one the Connection began."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.execute("INSERT INTO pool_reset_probe (v) VALUES (1)")
    cursor.close()


def _commit_behind_the_connections_back(conn: sa.Connection) -> None:
    conn.connection.dbapi_connection.commit()  # type: ignore[union-attr]


async def _probe_rows(conn: AsyncConnection) -> int:
    return int(await conn.scalar(sa.select(sa.func.count()).select_from(_probe)) or 0)


@pytest.mark.databases("mariadb", "postgresql")
async def test_a_transaction_the_connection_did_not_end_is_rolled_back_on_return(
    one_connection: AsyncEngine,
) -> None:
    engine = one_connection
    async with engine.begin() as conn:  # a commit first: it must not count for what follows
        await conn.execute(_probe.delete())
    async with engine.connect() as conn:
        await conn.run_sync(_insert_behind_the_connections_back)
    # The same pooled connection again: a commit now would keep a row left open.
    async with engine.connect() as conn:
        await conn.run_sync(_commit_behind_the_connections_back)
        assert await _probe_rows(conn) == 0
        await conn.commit()
    # Committed by the Connection: kept, and the connection is clean for the next one.
    async with engine.begin() as conn:
        await conn.execute(_probe.insert().values(v=2))
    async with engine.connect() as conn:
        await conn.run_sync(_insert_behind_the_connections_back)
    async with engine.connect() as conn:
        await conn.run_sync(_commit_behind_the_connections_back)
        assert await _probe_rows(conn) == 1
    # A commit by the Connection, then a write behind its back in the same checkout: the
    # write's transaction is open when the connection goes back, whatever came before.
    async with engine.connect() as conn:
        await conn.execute(_probe.insert().values(v=3))
        await conn.commit()
        await conn.run_sync(_insert_behind_the_connections_back)
    async with engine.connect() as conn:
        await conn.run_sync(_commit_behind_the_connections_back)
        assert await _probe_rows(conn) == 2  # v=2 and v=3, not the write left open

"""Error classification on the embedded default's SQLite: what a retry can cure."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from orderstack.storage.engine import create_engine
from orderstack.storage.errors import is_transient


async def _failure(sql: str, tmp_path: Path) -> DBAPIError:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}"))
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, q INTEGER CHECK (q >= 0))")
                )
                await conn.execute(sa.text("INSERT INTO t VALUES (1, 1)"))
                await conn.execute(sa.text(sql))
        return caught.value
    finally:
        await engine.dispose()


async def test_a_missing_table_is_transient(tmp_path: Path) -> None:
    assert is_transient(await _failure("SELECT * FROM not_migrated_yet", tmp_path))


@pytest.mark.parametrize(
    "sql", ["UPDATE t SET q = -1", "INSERT INTO t VALUES (1, 2)", "SELEKT 1"], ids=str
)
async def test_constraint_and_syntax_errors_are_permanent(sql: str, tmp_path: Path) -> None:
    assert not is_transient(await _failure(sql, tmp_path))


def test_pool_exhaustion_and_timeouts_are_transient() -> None:
    assert is_transient(PoolTimeoutError("pool exhausted"))
    assert is_transient(TimeoutError())
    assert is_transient(ConnectionRefusedError())


def test_errors_of_our_own_code_are_permanent() -> None:
    assert not is_transient(ValueError("bad data"))
    assert not is_transient(KeyError("missing"))

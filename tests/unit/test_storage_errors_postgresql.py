"""PostgreSQL's errors, classified by SQLSTATE (what the server says, not the exception's
class): the table of storage/errors.py, one case per code. The same failures produced on
the real server: tests/integration/test_postgresql.py."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError

from orderstack.storage.errors import is_broken_connection, is_transient, server_code

TRANSIENT = {
    "40P01": "deadlock detected",
    "40001": "could not serialize access",
    "55P03": "lock_timeout: lock not available",
    "57014": "statement_timeout: canceling statement",
    "57P01": "terminating connection due to administrator command",
    "53300": "too many connections",
    "08006": "connection failure",
    "08001": "could not connect",
    "25006": "read-only transaction (a standby being promoted)",
    "42P01": "relation does not exist (not migrated yet)",
    "42703": "column does not exist (not migrated yet)",
}
PERMANENT = {
    "23505": "unique violation",
    "23514": "check violation",
    "23502": "not null violation",
    "23503": "foreign key violation",
    "22003": "numeric value out of range",
    "42601": "syntax error",
    "42501": "insufficient privilege",
    "28P01": "password authentication failed",
}


def _error(sqlstate: str, message: str) -> DBAPIError:
    orig = asyncpg.exceptions.PostgresError.new({"C": sqlstate, "M": message})
    return DBAPIError("SELECT 1", None, orig)


@pytest.mark.parametrize("sqlstate", list(TRANSIENT))
def test_what_a_retry_can_cure_is_transient(sqlstate: str) -> None:
    error = _error(sqlstate, TRANSIENT[sqlstate])
    assert server_code(error.orig) == sqlstate
    assert is_transient(error)


@pytest.mark.parametrize("sqlstate", list(PERMANENT))
def test_integrity_data_syntax_and_access_errors_are_permanent(sqlstate: str) -> None:
    error = _error(sqlstate, PERMANENT[sqlstate])
    assert server_code(error.orig) == sqlstate
    assert not is_transient(error)


@pytest.mark.parametrize(
    ("sqlstate", "broken"), [("08006", True), ("57P01", True), ("40P01", False), ("23505", False)]
)
def test_a_connection_that_is_gone_is_a_broken_connection(sqlstate: str, broken: bool) -> None:
    assert is_broken_connection(_error(sqlstate, "x")) is broken


def test_as_sqlalchemy_hands_them_over_the_sqlstate_is_read_too() -> None:
    """SQLAlchemy's asyncpg dialect wraps the driver's error in its own class, carrying the
    SQLSTATE; a stale cached statement (after a schema change) is worth a retry."""
    dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)
    deadlock = dbapi.Error("deadlock detected")
    deadlock.sqlstate = "40P01"  # type: ignore[attr-defined]
    stale = dbapi.InvalidCachedStatementError("cached plan must not change result type")
    stale.sqlstate = "0A000"  # type: ignore[attr-defined]
    unsupported = dbapi.NotSupportedError("not supported")
    unsupported.sqlstate = "0A000"  # type: ignore[attr-defined]

    assert is_transient(DBAPIError("SELECT 1", None, deadlock))
    assert is_transient(DBAPIError("SELECT 1", None, stale))
    assert not is_transient(DBAPIError("SELECT 1", None, unsupported))

"""What a database error means: worth retrying, or a defect / bad data that never will be.

The answer comes from the server's own code (MySQL/MariaDB errno, PostgreSQL SQLSTATE,
SQLite result code), never from the exception class: a driver raises the same
``OperationalError`` for a deadlock and for a CHECK violation, and the same
``ProgrammingError`` for a syntax error and for a table a rolling deploy has not created yet.

Transient: the connection was lost or refused, a lock wait timed out, a deadlock, the server
is read-only (a failover in progress) or shutting down, a statement timed out, the pool was
exhausted, and a table or column that does not exist *yet* (the schema is being migrated).
Retrying such a failure, with backoff, is what keeps an order from being dead-lettered
because the database blinked. Everything else is permanent. One case is told by its class:
on PostgreSQL a cached prepared statement a schema change made stale (asyncpg's
``InvalidCachedStatementError``, whose SQLSTATE 0A000 otherwise means "not supported") is
transient, since the dialect drops its caches on it and the retry prepares afresh.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

MYSQL_TRANSIENT = frozenset(
    {
        1040,  # too many connections
        1047,  # Galera: WSREP has not yet prepared the node for application use
        1053,  # server shutdown in progress
        1054,  # unknown column: the migration adding it has not run yet
        1146,  # table does not exist: the migration creating it has not run yet
        1152,  # aborted connection
        1158,  # network read error
        1159,  # network read timeout
        1160,  # network write error
        1161,  # network write timeout
        1205,  # lock wait timeout exceeded
        1213,  # deadlock found
        1290,  # --read-only (a replica being promoted)
        1317,  # query execution was interrupted
        1637,  # too many active concurrent transactions
        1792,  # cannot execute statement in a READ ONLY transaction
        1836,  # running in read-only mode
        1927,  # connection was killed (MariaDB)
        1969,  # max_statement_time exceeded (MariaDB)
        2002,  # cannot connect through the socket
        2003,  # cannot connect to the server
        2006,  # server has gone away
        2013,  # lost connection during query (also asyncmy's read timeout)
        2055,  # lost connection at handshake / system error
        3024,  # max_execution_time exceeded (MySQL)
        3101,  # MySQL group replication / InnoDB Cluster: transaction rolled back on conflict
        4031,  # disconnected by the server for inactivity (MySQL 8)
    }
)

# SQLSTATE classes and codes of PostgreSQL that a retry can cure. Everything else is
# permanent: class 23 (integrity: CHECK 23514, unique 23505, NOT NULL 23502...), 22 (data),
# 42 but the two below (syntax, privileges), and so on.
POSTGRES_TRANSIENT_CLASSES = (
    "08",  # connection exception (08000, 08003 does not exist, 08006 failure, 08001...)
    "53",  # insufficient resources (53300 too many connections, 53100 disk full)
    "57",  # operator intervention (57014 statement_timeout, 57P01 terminated, 57P03...)
)
POSTGRES_TRANSIENT = frozenset(
    {
        "40001",  # serialization failure
        "40P01",  # deadlock detected
        "55P03",  # lock not available (lock_timeout)
        "57014",  # query canceled (statement_timeout): class 57 too, named for the reader
        "25006",  # read-only SQL transaction (a standby being promoted)
        "42P01",  # undefined table: not migrated yet
        "42703",  # undefined column: not migrated yet
    }
)
# The connection is gone (or going): nothing of its open transaction was kept.
POSTGRES_CONNECTION_LOST_CLASSES = ("08",)
POSTGRES_CONNECTION_LOST = frozenset({"57P01", "57P02", "57P03"})  # terminated, crash, startup
# A prepared statement a schema change made stale: SQLAlchemy's asyncpg dialect drops its
# statement caches on it, so the same statement works when retried.
POSTGRES_STALE_STATEMENT = "InvalidCachedStatementError"

SQLITE_TRANSIENT = frozenset({5, 6, 10, 13})  # BUSY, LOCKED, IOERR, FULL
SQLITE_MISSING_SCHEMA = ("no such table", "no such column")


# The connection itself broke (killed, server gone, network): the transaction it held was
# rolled back by the server, unless the break came during its COMMIT.
MYSQL_CONNECTION_LOST = frozenset({0, 1927, 2006, 2013, 2055, 4031})


class CommitOutcomeUnknown(Exception):
    """The connection broke during COMMIT: the transaction may or may not have committed.

    Transient for a consumer (its inbox record commits with the effects, so a retry after
    a commit that did happen changes nothing), but never retried blindly by a writer
    without such a record: an order stored twice would be a second order."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same work later can succeed (see the module docstring)."""
    if isinstance(exc, PoolTimeoutError | TimeoutError | OSError | CommitOutcomeUnknown):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    return _server_says_transient(exc.orig)


def is_broken_connection(exc: BaseException) -> bool:
    """True when the failure is the connection breaking before the transaction's COMMIT:
    nothing of that transaction was kept, so running it again on a fresh connection is
    safe (a pooled connection the server had killed meanwhile fails this way)."""
    if not isinstance(exc, DBAPIError) or isinstance(exc, CommitOutcomeUnknown):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if orig is None:
        return False
    code = server_code(orig)
    if _family(orig) == "postgresql":
        return isinstance(code, str) and (
            code in POSTGRES_CONNECTION_LOST or code[:2] in POSTGRES_CONNECTION_LOST_CLASSES
        )
    return _family(orig) == "mysql" and code in MYSQL_CONNECTION_LOST


def server_code(orig: BaseException | None) -> int | str | None:
    """The server's code of a driver error: MySQL/MariaDB errno, PostgreSQL SQLSTATE,
    SQLite primary result code."""
    if orig is None:
        return None
    if _family(orig) == "sqlite":
        code = getattr(orig, "sqlite_errorcode", None)
        return code & 0xFF if isinstance(code, int) else None
    if _family(orig) == "postgresql":
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return sqlstate if isinstance(sqlstate, str) else None
    args = getattr(orig, "args", ())  # MySQL drivers: (errno, message)
    return args[0] if args and isinstance(args[0], int) else None


def _family(orig: BaseException) -> str:
    module = type(orig).__module__
    if module.startswith(("sqlite3", "aiosqlite")) or ".sqlite" in module:
        return "sqlite"
    if module.startswith("asyncpg") or "asyncpg" in module or "psycopg" in module:
        return "postgresql"
    return "mysql"


def _server_says_transient(orig: BaseException | None) -> bool:
    if orig is None:
        return False
    code = server_code(orig)
    family = _family(orig)
    if family == "postgresql":
        if type(orig).__name__ == POSTGRES_STALE_STATEMENT:
            return True
        return isinstance(code, str) and (
            code in POSTGRES_TRANSIENT or code[:2] in POSTGRES_TRANSIENT_CLASSES
        )
    if family == "sqlite":
        message = str(orig).lower()
        return code in SQLITE_TRANSIENT or message.startswith(SQLITE_MISSING_SCHEMA)
    if code == 0:  # asyncmy: the connection is closed or was never opened
        return True
    return code in MYSQL_TRANSIENT

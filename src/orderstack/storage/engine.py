"""The async engine for a database URL, with the settings each database needs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from orderstack.storage.errors import is_transient

__all__ = ["Timeouts", "create_engine", "is_transient", "ping", "probe_writes"]


@dataclass(frozen=True)
class Timeouts:
    """Bounds on every wait for a database server, in seconds (None: the server's default).

    ``connect``: opening a connection. ``read``: any one wait for the server's answer, the
    bound that ends a hang on a frozen host or a partition (the connection is then dropped);
    keep it above the other two, which end a statement cleanly. ``statement``: one statement
    (MariaDB ``max_statement_time``, MySQL ``max_execution_time``, which bounds only SELECTs,
    PostgreSQL ``statement_timeout``). ``lock_wait``: waiting for any lock: a row lock
    (``innodb_lock_wait_timeout``), a table's metadata lock or the global read lock of
    ``FLUSH TABLES WITH READ LOCK``, which also holds COMMIT (``lock_wait_timeout``, which
    ``max_statement_time`` does not bound), and on PostgreSQL every lock (``lock_timeout``,
    a ``LOCK TABLE`` included). ``pool``: waiting for a free pooled connection."""

    connect: float = 5.0
    read: float | None = 30.0
    statement: float | None = 15.0
    lock_wait: int | None = 5
    pool: float = 5.0


def create_engine(
    url: URL, *, pool_size: int = 10, timeouts: Timeouts | None = None
) -> AsyncEngine:
    """Build the engine. SQLite gets WAL and one pooled connection (writes serialize anyway);
    servers get a bounded pool, READ COMMITTED (which keeps the inbox's and the outbox's
    locks narrow) and the ``timeouts``. Either way the pool rolls back only connections
    still in a transaction (``_reset_only_open_transactions``)."""
    timeouts = timeouts or Timeouts()
    if url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url)
    else:
        engine = _server_engine(url, pool_size, timeouts)
    _reset_only_open_transactions(engine)
    return engine


def _sqlite_engine(url: URL) -> AsyncEngine:
    # aiosqlite logs each call it runs at DEBUG, the statement's parameters with it:
    # held at INFO whatever LOG_LEVEL says (hide_parameters covers SQLAlchemy's own).
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"timeout": 30},
        hide_parameters=True,
        pool_reset_on_return=None,  # ours instead: _reset_only_open_transactions
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _server_engine(url: URL, pool_size: int, timeouts: Timeouts) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    backend = url.get_backend_name()
    if backend == "mysql":
        connect_args = {"connect_timeout": max(1, round(timeouts.connect))}
        if timeouts.read is not None:
            connect_args["read_timeout"] = timeouts.read
    elif backend == "postgresql":
        connect_args = {
            "timeout": timeouts.connect,
            "server_settings": _postgres_settings(timeouts),
        }
        if timeouts.read is not None:
            # asyncpg's bound on each wait for the server's answer (a frozen host): past it
            # the statement is cancelled and a TimeoutError raised.
            connect_args["command_timeout"] = timeouts.read
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeouts.pool,  # a request waits at most this for a connection: a 503
        # No pre-ping: it costs a round trip on every checkout, i.e. on every transaction of
        # every order. A connection found dead raises a disconnect error instead, on which
        # SQLAlchemy drops the whole pool; that one request is a transient failure (503 for
        # HTTP, a retry for the consumers and the relay) and the next ones reconnect.
        pool_recycle=1800,
        isolation_level="READ COMMITTED",
        connect_args=connect_args,
        # Statements' parameters (orders, idempotency keys) stay out of logs and error
        # messages, whatever LOG_LEVEL is.
        hide_parameters=True,
        pool_reset_on_return=None,  # ours instead: _reset_only_open_transactions
    )
    if backend == "mysql":
        _bound_mysql_sessions(engine, timeouts)
    return engine


# Whether a driver's connection is inside a transaction, as the driver itself knows it:
# asyncmy from the server's SERVER_STATUS_IN_TRANS flag (in the OK packet of each
# statement, COMMIT and ROLLBACK included), asyncpg and sqlite3 (under aiosqlite) from
# their own transaction state.
_IN_TRANSACTION: dict[str, Callable[[Any], bool]] = {
    "mysql": lambda driver: bool(driver.get_transaction_status()),
    "postgresql": lambda driver: bool(driver.is_in_transaction()),
    "sqlite": lambda driver: bool(driver.in_transaction),
}


def _reset_only_open_transactions(engine: AsyncEngine) -> None:
    """The pool rolls back a connection it takes back only when the driver says it is still
    in a transaction, instead of always.

    SQLAlchemy's default (``reset_on_return="rollback"``) also rolls back a connection
    returned right after its commit: a ``ROLLBACK`` round trip that ends nothing, on every
    transaction (on MariaDB and MySQL; a thread hop on SQLite; asyncpg's adapter sends
    none), on each order's five (intake, the two relays, the two consumers). A
    ``Connection`` closed inside a transaction it began rolls it back itself, and the pool
    is told so (``transaction_was_reset``); anything else the driver reports open (the
    DBAPI connection used directly, a commit that failed) is rolled back as before. A
    connection the pool drops outside the event loop is closed, not reset.
    """
    in_transaction = _IN_TRANSACTION.get(engine.dialect.name, lambda driver: True)

    @event.listens_for(engine.sync_engine, "reset")
    def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        if state.transaction_was_reset or not state.asyncio_safe:
            return
        driver = record.driver_connection if record is not None else None
        if driver is None or in_transaction(driver):
            dbapi_connection.rollback()


def _postgres_settings(timeouts: Timeouts) -> dict[str, str]:
    """The session's bounds, sent in the startup packet (no extra round trip): a statement
    past ``statement_timeout`` fails with 57014, a lock wait past ``lock_timeout`` with
    55P03, both transient (storage/errors.py)."""
    settings: dict[str, str] = {}
    if timeouts.statement is not None:
        settings["statement_timeout"] = str(int(timeouts.statement * 1000))
    if timeouts.lock_wait is not None:
        settings["lock_timeout"] = str(timeouts.lock_wait * 1000)
    return settings


def _bound_mysql_sessions(engine: AsyncEngine, timeouts: Timeouts) -> None:
    """Each new connection gets the statement and lock-wait bounds of its session; the
    statement bound's variable depends on the server (MariaDB or MySQL), asked once per
    connection, so no statement names a variable the server lacks."""

    @event.listens_for(engine.sync_engine, "connect")
    def _session_bounds(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if timeouts.lock_wait is not None:
                # Both variables exist on MySQL 8 and MariaDB; lock_wait_timeout's default
                # is a year, so a global read lock held COMMIT for as long as it lasted.
                bound = max(1, int(timeouts.lock_wait))
                cursor.execute(
                    f"SET SESSION innodb_lock_wait_timeout = {bound}, lock_wait_timeout = {bound}"
                )
            if timeouts.statement is not None:
                cursor.execute("SELECT VERSION()")
                (version,) = cursor.fetchone()
                if "mariadb" in str(version).lower():
                    cursor.execute(f"SET SESSION max_statement_time = {float(timeouts.statement)}")
                else:
                    cursor.execute(
                        f"SET SESSION max_execution_time = {int(timeouts.statement * 1000)}"
                    )
        finally:
            cursor.close()


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


async def probe_writes(engine: AsyncEngine, table: sa.Table) -> None:
    """Raises unless ``table`` takes a write now: an UPDATE that matches no row, rolled
    back. It waits where a real write would, behind ``FLUSH TABLES WITH READ LOCK``, a
    ``LOCK TABLE`` or a read-only server, all of which a ``SELECT 1`` passes; the caller
    bounds the wait. SQLite (one writer, one pooled connection) is only pinged."""
    if engine.dialect.name == "sqlite":
        await ping(engine)
        return
    (key,) = table.primary_key.columns
    async with engine.connect() as conn:
        await conn.begin()
        await conn.execute(sa.update(table).where(key == -1).values({key.name: key}))
        await conn.rollback()

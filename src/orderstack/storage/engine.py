"""The async engine for a database URL, with the settings each database needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(url: URL, *, pool_size: int = 10) -> AsyncEngine:
    """Build the engine. SQLite gets WAL and one pooled connection (writes serialize anyway);
    servers get a bounded pool and READ COMMITTED, which keeps the inbox's and the outbox's
    locks narrow."""
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=30, connect_args={"timeout": 30}
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "mysql":
        connect_args = {"connect_timeout": 5}
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,  # a request waits at most this for a connection, then gets a 503
        # No pre-ping: it costs a round trip on every checkout, i.e. on every transaction of
        # every order. A connection found dead raises a disconnect error instead, on which
        # SQLAlchemy drops the whole pool; that one request is a transient failure (503 for
        # HTTP, a retry for the consumers and the relay) and the next ones reconnect.
        pool_recycle=1800,
        isolation_level="READ COMMITTED",
        connect_args=connect_args,
    )


def is_transient(exc: BaseException) -> bool:
    """True for failures that a retry can cure: lost connection, deadlock, lock timeout,
    pool exhausted. Anything else is a defect or bad data and must not loop forever."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError | OSError):
        return True
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))

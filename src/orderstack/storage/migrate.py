"""Run a service's Alembic migrations on an async engine.

Each service has its own scripts (``<service>/migrations``) and its own version table, so
the two never touch each other's schema. A lock serialises replicas that start at the same
moment: a named lock (``GET_LOCK``) on MySQL/MariaDB, a session advisory lock
(``pg_try_advisory_lock``) on PostgreSQL; SQLite has one writer anyway. On PostgreSQL the
service's migrations run in one transaction (its DDL is transactional): a step that fails
leaves the schema as it was before the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack.backoff import Backoff
from orderstack.storage.errors import is_transient

log = structlog.get_logger(__name__)

ServiceName = Literal["orders", "products"]
_PACKAGE = Path(__file__).resolve().parent.parent
_LOCK_TIMEOUT_SECONDS = 60


def _config(service: ServiceName, connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_PACKAGE / "storage" / "migrations"))
    cfg.set_main_option("version_locations", str(_PACKAGE / service / "migrations"))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    cfg.attributes["version_table"] = f"alembic_version_{service}"
    return cfg


async def _lift_statement_bound(conn: AsyncConnection) -> None:
    """A migration may rewrite a big table: the session's statement bound does not apply.
    On PostgreSQL only for this transaction (``SET LOCAL``), which holds every step, so
    the pooled connection keeps its bound afterwards."""
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        return
    version = str(await conn.scalar(sa.text("SELECT VERSION()")))
    if "mariadb" in version.lower():
        await conn.execute(sa.text("SET SESSION max_statement_time = 0"))


# The lock: taken in short steps, each well inside the connection's read timeout.
_TRY_LOCK = {
    "mysql": "SELECT GET_LOCK(:name, 2)",
    # hashtext(): PostgreSQL's own stable hash, the advisory lock's int key for the name.
    "postgresql": "SELECT pg_try_advisory_lock(hashtext(:name))",
}
_RELEASE_LOCK = {
    "mysql": "SELECT RELEASE_LOCK(:name)",
    "postgresql": "SELECT pg_advisory_unlock(hashtext(:name))",
}


async def _take_lock(conn: AsyncConnection, name: str) -> None:
    deadline = time.monotonic() + _LOCK_TIMEOUT_SECONDS
    dialect = conn.dialect.name
    while True:
        got = await conn.scalar(sa.text(_TRY_LOCK[dialect]), {"name": name})
        if got in (1, True):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not take the migration lock {name}")
        if dialect == "postgresql":  # the try does not wait; GET_LOCK waited 2 s
            await asyncio.sleep(0.2)


async def _release_lock(conn: AsyncConnection, name: str) -> None:
    if conn.dialect.name == "postgresql" and conn.in_transaction():
        # A failed step leaves the transaction aborted, where no statement runs: end it
        # (nothing of it is kept) before releasing the session's lock.
        await conn.rollback()
    await conn.execute(sa.text(_RELEASE_LOCK[conn.dialect.name]), {"name": name})


def _lock_name(service: ServiceName, database: str) -> str:
    """The migration lock of ``service``'s tables in ``database``: a MySQL/MariaDB named
    lock is the whole server's (at most 64 characters), so it names the database too, and
    two databases on one server migrate at once."""
    name = f"orderstack_migrate_{service}_{database}"
    if len(name) > 64:
        name = f"orderstack_migrate_{service}_{hashlib.sha256(database.encode()).hexdigest()[:32]}"
    return name


async def _run(engine: AsyncEngine, service: ServiceName, action: str, target: str) -> None:
    lock = _lock_name(service, engine.url.database or "")
    async with engine.connect() as conn:
        locked = conn.dialect.name in _TRY_LOCK
        if locked:
            await _lift_statement_bound(conn)
            await _take_lock(conn, lock)
        try:

            def run(sync_conn: Connection) -> None:
                cfg = _config(service, sync_conn)
                if action == "upgrade":
                    command.upgrade(cfg, target)
                else:
                    command.downgrade(cfg, target)

            await conn.run_sync(run)
            await conn.commit()
        finally:
            if locked:
                await _release_lock(conn, lock)


async def upgrade(engine: AsyncEngine, service: ServiceName, revision: str = "head") -> None:
    await _run(engine, service, "upgrade", revision)


async def downgrade(engine: AsyncEngine, service: ServiceName, steps: int = 1) -> None:
    await _run(engine, service, "downgrade", f"-{steps}")


async def upgrade_when_reachable(engine: AsyncEngine, service: ServiceName) -> None:
    """``upgrade``, waiting (with backoff) while the database cannot be reached: a replica
    started before its database, or during a failover, comes up once the database does,
    instead of exiting. A failure a wait cannot cure (wrong password, a broken migration)
    is raised at once."""
    backoff = Backoff(0.5, 10.0)
    while True:
        try:
            await upgrade(engine, service)
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            wait = backoff.next()
            log.warning("database unreachable, migration retried", error=repr(exc), retry_in=wait)
            await asyncio.sleep(wait)

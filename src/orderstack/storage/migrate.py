"""Run a service's Alembic migrations on an async engine.

Each service has its own scripts (``<service>/migrations``) and its own version table, so
the two never touch each other's schema. On MySQL/MariaDB a named lock serialises replicas
that start at the same moment.
"""

from __future__ import annotations

import asyncio
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
    """A migration may rewrite a big table: the session's statement bound does not apply."""
    version = str(await conn.scalar(sa.text("SELECT VERSION()")))
    if "mariadb" in version.lower():
        await conn.execute(sa.text("SET SESSION max_statement_time = 0"))


async def _take_lock(conn: AsyncConnection, name: str) -> None:
    """Wait for the lock in short steps, each well inside the connection's read timeout."""
    deadline = time.monotonic() + _LOCK_TIMEOUT_SECONDS
    while True:
        got = await conn.scalar(sa.text("SELECT GET_LOCK(:name, 2)"), {"name": name})
        if got == 1:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not take the migration lock {name}")


async def _run(engine: AsyncEngine, service: ServiceName, action: str, target: str) -> None:
    async with engine.connect() as conn:
        locked = conn.dialect.name == "mysql"
        if locked:
            await _lift_statement_bound(conn)
            await _take_lock(conn, f"orderstack_migrate_{service}")
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
                await conn.execute(
                    sa.text("SELECT RELEASE_LOCK(:name)"), {"name": f"orderstack_migrate_{service}"}
                )


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

"""What only PostgreSQL does, on the real server (the suites that run on every database run
here too, through the ``engine`` fixture): its failures and what ``is_transient`` makes of
them (SQLSTATE, never the exception class), its session bounds, and the migrations'
advisory lock.

Each failure is produced for real: a lock wait past ``lock_timeout``, a deadlock, a
statement past ``statement_timeout``, a backend terminated under a pooled connection, a
host that stops answering, a CHECK violation, a duplicate key, a missing table.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from harness.sandbox import Sandbox
from orderstack.batching import Batcher
from orderstack.orders.domain import NewOrder, Order, OrderLine
from orderstack.orders.repository import OrderUnitOfWork, orders
from orderstack.storage import migrate
from orderstack.storage.engine import Timeouts
from orderstack.storage.errors import is_broken_connection, is_transient, server_code
from orderstack.storage.types import utcnow
from tests.integration.test_database_failures import _engine, _failure, _FreezingProxy

pytestmark = [pytest.mark.integration, pytest.mark.databases("postgresql")]


@pytest.fixture
async def table(engine: AsyncEngine) -> str:
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE IF EXISTS failure_probe"))
        await conn.execute(
            sa.text(
                "CREATE TABLE failure_probe (id INT PRIMARY KEY, qty INT NOT NULL,"
                " CONSTRAINT ck_probe_qty CHECK (qty >= 0))"
            )
        )
        await conn.execute(sa.text("INSERT INTO failure_probe VALUES (1, 5), (2, 5)"))
    return "failure_probe"


# -- failures ------------------------------------------------------------------------------


async def test_a_lock_wait_past_lock_timeout_is_transient(sandbox: Sandbox, table: str) -> None:
    async with (
        _engine(sandbox.engine_url, Timeouts(lock_wait=1)) as engine,
        engine.connect() as holder,
        holder.begin(),
    ):
        await holder.execute(sa.text("SELECT * FROM failure_probe WHERE id = 1 FOR UPDATE"))
        started = time.monotonic()
        error = await _failure(engine, "UPDATE failure_probe SET qty = 4 WHERE id = 1")
        waited = time.monotonic() - started

    assert server_code(error.orig) == "55P03"
    assert is_transient(error)
    assert waited < 4


async def test_a_real_deadlock_is_transient(engine: AsyncEngine, table: str) -> None:
    """Two transactions lock rows 1 and 2 in opposite orders: PostgreSQL picks a victim
    (40P01) after deadlock_timeout; the other goes through."""
    both_hold_one = asyncio.Barrier(2)

    async def cross(first: int, second: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE failure_probe SET qty = qty - 1 WHERE id = :id"), {"id": first}
            )
            await both_hold_one.wait()
            await conn.execute(
                sa.text("UPDATE failure_probe SET qty = qty - 1 WHERE id = :id"), {"id": second}
            )

    results = await asyncio.gather(cross(1, 2), cross(2, 1), return_exceptions=True)

    [error] = [r for r in results if isinstance(r, BaseException)]
    assert isinstance(error, DBAPIError)
    assert server_code(error.orig) == "40P01"
    assert is_transient(error)


async def test_a_statement_past_statement_timeout_is_stopped_and_transient(
    sandbox: Sandbox,
) -> None:
    async with _engine(sandbox.engine_url, Timeouts(statement=0.5)) as engine:
        started = time.monotonic()
        error = await _failure(engine, "SELECT pg_sleep(5)")
        waited = time.monotonic() - started

    assert server_code(error.orig) == "57014"
    assert is_transient(error)
    assert waited < 3


async def test_a_check_violation_is_permanent(engine: AsyncEngine, table: str) -> None:
    error = await _failure(engine, "UPDATE failure_probe SET qty = -1 WHERE id = 1")

    assert server_code(error.orig) == "23514"
    assert not is_transient(error)


async def test_the_products_check_constraint_refuses_negative_stock(engine: AsyncEngine) -> None:
    error = await _failure(
        engine,
        "INSERT INTO products (name, price, qty, version, created_at, updated_at)"
        " VALUES ('minus', 1, -1, 1, now(), now())",
    )

    assert server_code(error.orig) == "23514"
    assert "ck_products_qty_not_negative" in str(error.orig)
    assert not is_transient(error)


async def test_a_duplicate_key_is_permanent(engine: AsyncEngine, table: str) -> None:
    error = await _failure(engine, "INSERT INTO failure_probe VALUES (1, 1)")

    assert server_code(error.orig) == "23505"
    assert not is_transient(error)


async def test_a_missing_table_is_transient(engine: AsyncEngine) -> None:
    error = await _failure(engine, "SELECT * FROM table_a_migration_will_create")

    assert server_code(error.orig) == "42P01"
    assert is_transient(error)


async def test_a_syntax_error_is_permanent(engine: AsyncEngine) -> None:
    error = await _failure(engine, "SELEKT 1")

    assert server_code(error.orig) == "42601"
    assert not is_transient(error)


async def _backend_pid(conn: AsyncConnection) -> int:
    return int(await conn.scalar(sa.text("SELECT pg_backend_pid()")))


async def test_a_terminated_backend_is_transient_and_a_broken_connection(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as victim:
        pid = await _backend_pid(victim)
        async with engine.connect() as killer:
            await killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as caught:
            await victim.execute(sa.text("SELECT 1"))
        await victim.invalidate()

    assert is_transient(caught.value)
    assert is_broken_connection(caught.value)


async def test_a_write_on_a_pooled_connection_the_server_terminated_succeeds_once(
    sandbox: Sandbox, engine: AsyncEngine
) -> None:
    """The group commit meets a connection whose backend was terminated while it sat in
    the pool: the batch runs again on a fresh one, and the order is stored once."""
    async with _engine(sandbox.engine_url, Timeouts()) as intake_engine:

        async def store(new: list[NewOrder]) -> list[Order]:
            async with OrderUnitOfWork(intake_engine, None) as uow:
                stored = await uow.orders.add_many(new, utcnow())
                await uow.commit()
            return stored

        async with intake_engine.connect() as pooled:
            victim = await _backend_pid(pooled)
        async with engine.connect() as killer:
            await killer.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})

        intake: Batcher[NewOrder, Order] = Batcher(store)
        order = await intake.submit(NewOrder((OrderLine(5353, 1),), Decimal(3)))

    async with engine.connect() as conn:
        stored = await conn.scalar(
            sa.select(sa.func.count()).select_from(orders).where(orders.c.product_id == 5353)
        )
    assert order.id > 0
    assert stored == 1


async def test_a_frozen_database_host_ends_in_a_transient_error_not_a_hang(
    sandbox: Sandbox,
) -> None:
    url = sandbox.engine_url
    async with _FreezingProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        frozen_url = url.set(host="127.0.0.1", port=proxy.port)
        async with _engine(frozen_url, Timeouts(read=1.0)) as engine:
            async with engine.connect() as conn:
                assert await conn.scalar(sa.text("SELECT 1")) == 1
            proxy.frozen.set()
            started = time.monotonic()
            with pytest.raises((DBAPIError, TimeoutError)) as caught:
                async with asyncio.timeout(10), engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 2"))
            waited = time.monotonic() - started

    assert is_transient(caught.value)
    assert waited < 5


# -- session bounds and migrations ---------------------------------------------------------


async def test_each_connection_carries_the_session_bounds(sandbox: Sandbox) -> None:
    async with (
        _engine(sandbox.engine_url, Timeouts(statement=7, lock_wait=3)) as engine,
        engine.connect() as conn,
    ):
        statement = await conn.scalar(sa.text("SHOW statement_timeout"))
        lock = await conn.scalar(sa.text("SHOW lock_timeout"))
        isolation = await conn.scalar(sa.text("SHOW transaction_isolation"))

    assert (statement, lock, isolation) == ("7s", "3s", "read committed")


async def test_a_migration_lifts_the_statement_bound_for_itself_only(sandbox: Sandbox) -> None:
    """``SET LOCAL``: the pooled connection the migration used keeps its bound."""
    async with _engine(sandbox.engine_url, Timeouts(statement=7)) as engine:
        await migrate.downgrade(engine, "orders", 1)
        await migrate.upgrade(engine, "orders")
        async with engine.connect() as conn:  # the pool's one idle connection: the same
            assert await conn.scalar(sa.text("SHOW statement_timeout")) == "7s"


async def test_replicas_migrating_at_once_take_turns_on_the_advisory_lock(
    sandbox: Sandbox, engine: AsyncEngine
) -> None:
    """Three processes (replicas starting) upgrade a database some revisions behind at the
    same moment: one migrates, the others wait for the lock and then find nothing to do;
    none fails on a table created twice, and the lock is free afterwards."""
    for service in ("orders", "products"):
        await migrate.downgrade(engine, service, 3)
    env = {**os.environ, "DATABASE_URL": sandbox.database_url}
    replicas = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orderstack",
            "migrate",
            "up",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    async with asyncio.timeout(60):
        outputs = [(await p.communicate())[0].decode() for p in replicas]
    assert [p.returncode for p in replicas] == [0, 0, 0], outputs

    async with engine.connect() as conn:
        heads = [
            await conn.scalar(sa.text("SELECT version_num FROM alembic_version_orders")),
            await conn.scalar(sa.text("SELECT version_num FROM alembic_version_products")),
        ]
        # This database's advisory locks only: pg_locks is the whole server's, and other
        # sandboxes migrate at the same time (make test's parallel part).
        held = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())"
            )
        )
    assert heads == [migrate_head("orders"), migrate_head("products")]
    assert held == 0


def migrate_head(service: str) -> str:
    """The newest revision of a service's migrations."""
    script = ScriptDirectory.from_config(_alembic_config(service))
    head = script.get_current_head()
    assert head is not None
    return head


def _alembic_config(service: str) -> Config:
    package = Path(migrate.__file__).resolve().parent.parent
    cfg = Config()
    cfg.set_main_option("script_location", str(package / "storage" / "migrations"))
    cfg.set_main_option("version_locations", str(package / service / "migrations"))
    cfg.set_main_option("path_separator", "os")
    return cfg


async def test_a_failed_migration_keeps_nothing_and_releases_the_lock(
    sandbox: Sandbox, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's DDL is transactional: what a run that fails did rolls back, and the
    lock is released, so the next run (another replica) goes through at once."""
    await migrate.downgrade(engine, "orders", 2)

    def broken_upgrade(cfg: Any, _target: str) -> None:
        conn = cfg.attributes["connection"]
        conn.execute(sa.text("CREATE TABLE leaked (id INT)"))
        conn.execute(sa.text("SELEKT 1"))

    monkeypatch.setattr(migrate.command, "upgrade", broken_upgrade)
    with pytest.raises(DBAPIError):
        await migrate.upgrade(engine, "orders")
    monkeypatch.undo()
    async with asyncio.timeout(10):  # the lock at once: it was released
        await migrate.upgrade(engine, "orders")

    async with engine.connect() as conn:
        leaked = await conn.scalar(sa.text("SELECT to_regclass('leaked') IS NOT NULL"))
        columns = await conn.run_sync(
            lambda c: {str(col["name"]) for col in sa.inspect(c).get_columns("orders")}
        )
    assert not leaked
    assert "quantity" in columns  # back at head


async def test_idempotency_keys_stay_exact_through_orders_0002_down_and_up(
    engine: AsyncEngine,
) -> None:
    """orders_0002 changes no collation on PostgreSQL (its deterministic collations compare
    exactly already): keys differing only in case, accents or a trailing space stay
    distinct orders below it and after it, and the unique index holds throughout."""
    keys = ["pg-key", "PG-KEY", "pg-kéy", "pg-key "]
    async with OrderUnitOfWork(engine, None) as uow:
        made = await uow.orders.add_many(
            [NewOrder((OrderLine(1, 1),), Decimal(1), request_id=k) for k in keys], utcnow()
        )
        await uow.commit()

    while True:
        async with engine.connect() as conn:
            version = await conn.scalar(sa.text("SELECT version_num FROM alembic_version_orders"))
        if version == "orders_0001":
            break
        await migrate.downgrade(engine, "orders", 1)
    with pytest.raises(DBAPIError) as duplicate:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO orders (product_id, total_price, status, request_id,"
                    " created_at, updated_at) VALUES (1, 1, 'pending', 'PG-KEY', now(), now())"
                )
            )
    await migrate.upgrade(engine, "orders")

    assert server_code(duplicate.value.orig) == "23505"
    async with OrderUnitOfWork(engine, None) as uow:
        found = [await uow.orders.by_request_id(k) for k in keys]
    assert [f[0].id if f else None for f in found] == [o.id for o in made]

"""Real MariaDB failures, and what the services make of them: retry or give up.
(PostgreSQL's: tests/integration/test_postgresql.py.)

Each failure is produced on the real server (a held row lock, a killed connection, a CHECK
violation, a missing table, a statement past its time, a host that stops answering) and
classified by ``is_transient``, which decides between retrying a batch and dead-lettering
a message, and between a 503 and a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.processes import free_port
from harness.sandbox import Sandbox
from orderstack.batching import Batcher
from orderstack.orders.domain import NewOrder, Order, OrderLine
from orderstack.orders.repository import OrderUnitOfWork, orders
from orderstack.storage import migrate
from orderstack.storage.engine import Timeouts, create_engine
from orderstack.storage.errors import is_transient, server_code
from orderstack.storage.types import utcnow

pytestmark = [pytest.mark.integration, pytest.mark.databases("mariadb")]


def _url(sandbox: Sandbox) -> URL:
    return make_url(sandbox.database_url).set(drivername="mysql+asyncmy")


@contextlib.asynccontextmanager
async def _engine(url: URL, timeouts: Timeouts) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url, pool_size=2, timeouts=timeouts)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _failure(engine: AsyncEngine, sql: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    return caught.value


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
        await conn.execute(sa.text("INSERT INTO failure_probe VALUES (1, 5)"))
    return "failure_probe"


async def test_a_lock_wait_past_its_bound_is_transient(sandbox: Sandbox, table: str) -> None:
    async with (
        _engine(_url(sandbox), Timeouts(lock_wait=1)) as engine,
        engine.connect() as holder,
        holder.begin(),
    ):
        await holder.execute(sa.text("SELECT * FROM failure_probe WHERE id = 1 FOR UPDATE"))
        started = time.monotonic()
        error = await _failure(engine, "UPDATE failure_probe SET qty = 4 WHERE id = 1")
        waited = time.monotonic() - started

    assert server_code(error.orig) == 1205
    assert is_transient(error)
    assert waited < 4  # the session's bound, not the server's 50 s default


async def test_a_check_violation_is_permanent(engine: AsyncEngine, table: str) -> None:
    error = await _failure(engine, "UPDATE failure_probe SET qty = -1 WHERE id = 1")

    assert server_code(error.orig) in {4025, 3819}  # MariaDB, MySQL
    assert not is_transient(error)


async def test_a_duplicate_key_is_permanent(engine: AsyncEngine, table: str) -> None:
    error = await _failure(engine, "INSERT INTO failure_probe VALUES (1, 1)")

    assert server_code(error.orig) == 1062
    assert not is_transient(error)


async def test_a_missing_table_is_transient(engine: AsyncEngine) -> None:
    """During a rolling deploy the new code may run before its migration: retry, never
    dead-letter an order.created because of it."""
    error = await _failure(engine, "SELECT * FROM table_a_migration_will_create")

    assert server_code(error.orig) == 1146
    assert is_transient(error)


async def test_a_syntax_error_is_permanent(engine: AsyncEngine) -> None:
    error = await _failure(engine, "SELEKT 1")

    assert server_code(error.orig) == 1064
    assert not is_transient(error)


async def test_a_killed_connection_is_transient(engine: AsyncEngine) -> None:
    async with engine.connect() as victim:
        connection_id = await victim.scalar(sa.text("SELECT CONNECTION_ID()"))
        async with engine.connect() as killer:
            await killer.execute(sa.text(f"KILL CONNECTION {int(connection_id)}"))
        with pytest.raises(DBAPIError) as caught:
            await victim.execute(sa.text("SELECT 1"))
        await victim.invalidate()

    assert is_transient(caught.value)


async def test_a_statement_past_its_bound_is_stopped_and_transient(sandbox: Sandbox) -> None:
    async with _engine(_url(sandbox), Timeouts(statement=0.5)) as engine:
        started = time.monotonic()
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as conn:
                # SLEEP would be cut short silently; a long scan is a statement that errors.
                await conn.execute(
                    sa.text(
                        "SELECT COUNT(*) FROM information_schema.columns a,"
                        " information_schema.columns b, information_schema.columns c"
                    )
                )
        waited = time.monotonic() - started

    assert server_code(caught.value.orig) == 1969
    assert is_transient(caught.value)
    assert waited < 5


class _FreezingProxy:
    """A TCP relay to the database that can stop forwarding: a host that froze."""

    def __init__(self, host: str, port: int, listen_port: int = 0) -> None:
        self._target = (host, port)
        self._listen_port = listen_port
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._relays: list[asyncio.Task[None]] = []
        self.port = 0

    async def __aenter__(self) -> _FreezingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self._listen_port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._relays:
            task.cancel()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.append(task)
        server_r, server_w = await asyncio.open_connection(*self._target)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if self.frozen.is_set():
                        await asyncio.Event().wait()  # swallow: nothing ever comes back
                    writer.write(data)
                    await writer.drain()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))


async def test_a_frozen_database_host_ends_in_a_transient_error_not_a_hang(
    sandbox: Sandbox,
) -> None:
    url = _url(sandbox)
    async with _FreezingProxy(url.host or "127.0.0.1", url.port or 3306) as proxy:
        frozen_url = url.set(host="127.0.0.1", port=proxy.port)
        async with _engine(frozen_url, Timeouts(read=1.0)) as engine:
            async with engine.connect() as conn:
                assert await conn.scalar(sa.text("SELECT 1")) == 1
            proxy.frozen.set()
            started = time.monotonic()
            with pytest.raises(DBAPIError) as caught:
                async with asyncio.timeout(10), engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 2"))
            waited = time.monotonic() - started

    assert is_transient(caught.value)
    assert waited < 5


async def test_a_write_on_a_pooled_connection_the_server_killed_succeeds_once(
    sandbox: Sandbox, engine: AsyncEngine
) -> None:
    """The order intake's group commit meets a connection MariaDB killed while it sat in
    the pool: the batch runs again on a fresh one (nothing of it was kept), and the
    client gets its order, stored once, instead of a 503."""
    async with _engine(_url(sandbox), Timeouts()) as intake_engine:

        async def store(new: list[NewOrder]) -> list[Order]:
            async with OrderUnitOfWork(intake_engine, None) as uow:
                stored = await uow.orders.add_many(new, utcnow())
                await uow.commit()
            return stored

        async with intake_engine.connect() as pooled:  # the connection the pool will keep
            victim = await pooled.scalar(sa.text("SELECT CONNECTION_ID()"))
        async with engine.connect() as killer:
            await killer.execute(sa.text(f"KILL CONNECTION {int(victim)}"))

        intake: Batcher[NewOrder, Order] = Batcher(store)
        order = await intake.submit(NewOrder((OrderLine(4242, 1),), Decimal(3)))

    async with engine.connect() as conn:
        stored = await conn.scalar(
            sa.select(sa.func.count()).select_from(orders).where(orders.c.product_id == 4242)
        )
    assert order.id > 0
    assert stored == 1


async def test_a_service_started_before_its_database_migrates_once_it_is_there(
    sandbox: Sandbox,
) -> None:
    url = _url(sandbox)
    port = free_port()
    late_url = url.set(host="127.0.0.1", port=port)  # nothing listens there yet
    async with _engine(late_url, Timeouts(connect=1)) as engine:
        migrating = asyncio.create_task(migrate.upgrade_when_reachable(engine, "orders"))
        await asyncio.sleep(1.5)
        assert not migrating.done()
        async with _FreezingProxy(url.host or "127.0.0.1", url.port or 3306, listen_port=port):
            async with asyncio.timeout(30):
                await migrating


async def test_a_wrong_password_is_not_waited_for(sandbox: Sandbox) -> None:
    wrong = _url(sandbox).set(username="nobody_here", password="wrong")  # noqa: S106
    async with _engine(wrong, Timeouts(connect=1)) as engine, asyncio.timeout(10):
        with pytest.raises(DBAPIError) as caught:
            await migrate.upgrade_when_reachable(engine, "orders")
    assert server_code(caught.value.orig) == 1045

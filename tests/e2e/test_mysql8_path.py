"""The MySQL 8 path (no ``INSERT … RETURNING``: one INSERT per order, each id read from its
own statement) on the real stack: forced with DB_INSERT_RETURNING=off on MariaDB, services
as separate processes on RabbitMQ and Redis. The same workflows as the default path."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness import sandbox as servers
from harness.processes import FORK_VARIABLE
from harness.sandbox import Sandbox
from harness.stack import Stack

from .workflows import complete_order_flow, concurrent_orders_never_oversell, idempotency_flow

pytestmark = pytest.mark.e2e

PORTABLE = {"DB_INSERT_RETURNING": "off"}


async def _mysql(*statements: str) -> list[tuple[object, ...]]:
    """Run ``statements`` as the server's admin; the last one's rows."""
    async with servers.mysql_admin() as conn, conn.cursor() as cursor:
        for statement in statements:
            await cursor.execute(statement)
        return list(await cursor.fetchall())


@dataclass
class GeneralLog:
    """MariaDB's general query log (every statement the server received), switched on for
    this module and back off (if it was off) at its end: what the services sent, seen from
    the server's side."""

    path: Path
    start: int  # the file's size when this module began

    def statements_on(self, database: str) -> list[str]:
        """The statements of the connections opened on ``database`` since the start (each
        line of the log names its connection's thread id)."""
        with self.path.open("rb") as log:
            log.seek(self.start)
            text = log.read().decode(errors="replace")
        entry = re.compile(r"^(?:\d{6} +\d+:\d+:\d+)?\s+(\d+) (\w[\w ]*?)\t(.*)$")
        threads: set[str] = set()
        statements: list[tuple[str, str]] = []
        for line in text.splitlines():
            if not (match := entry.match(line)):
                if statements:  # a statement that spans lines
                    thread, sql = statements[-1]
                    statements[-1] = (thread, f"{sql}\n{line}")
                continue
            thread, command, argument = match.groups()
            opened_on = command == "Connect" and f" on {database} " in f"{argument} "
            if opened_on or (command == "Init DB" and argument.strip() == database):
                threads.add(thread)
            elif command in ("Query", "Execute"):
                statements.append((thread, argument))
        return [sql for thread, sql in statements if thread in threads]


@pytest.fixture(scope="module")
def general_log() -> Iterator[GeneralLog]:
    was_on, name, datadir = asyncio.run(
        _mysql("SELECT @@general_log, @@general_log_file, @@datadir")
    )[0]
    path = Path(str(name))
    if not path.is_absolute():
        path = Path(str(datadir)) / path
    if not was_on:
        asyncio.run(_mysql("SET GLOBAL general_log = ON"))
    try:
        yield GeneralLog(path, path.stat().st_size if path.exists() else 0)
    finally:
        if not was_on:
            asyncio.run(_mysql("SET GLOBAL general_log = OFF"))


@pytest.fixture(scope="module")
def portable(
    make_sandbox: Callable[[str], Sandbox],
    tmp_path_factory: pytest.TempPathFactory,
    general_log: GeneralLog,
) -> Iterator[Stack]:
    sandbox = make_sandbox("mysql8")
    # New interpreters, not forked ones (FORK_VARIABLE=0): the test below reads each
    # process's environment from /proc, which shows a forked one's as the fork server's.
    running = Stack(
        sandbox,
        tmp_path_factory.mktemp("logs"),
        product_replicas=2,
        extra_env={**PORTABLE, FORK_VARIABLE: "0"},
    ).start()
    try:
        yield running
    finally:
        running.stop()


def test_the_order_service_runs_with_the_portable_path_forced(portable: Stack) -> None:
    for process in portable.orders:
        assert process.process is not None
        environ = Path(f"/proc/{process.process.pid}/environ").read_bytes().split(b"\0")
        assert b"DB_INSERT_RETURNING=off" in environ


async def test_complete_order_flow(portable: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await complete_order_flow(client, portable.product_url, portable.order_url)


async def test_concurrent_orders_on_one_product_never_oversell(portable: Stack) -> None:
    # Enough at once that the order service writes them in multi-order group commits.
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        await concurrent_orders_never_oversell(
            client,
            portable.product_url,
            portable.order_url,
            portable.sandbox.database_url,
            stock=25,
            demand=120,
        )


async def test_idempotency_keys(portable: Stack) -> None:
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64)) as client:
        await idempotency_flow(client, portable.product_url, portable.order_url)


async def test_the_server_received_one_insert_per_order_and_no_returning(
    portable: Stack, general_log: GeneralLog
) -> None:
    """Last in the module, after the workflows above placed their orders: every INSERT INTO
    orders the server received on this sandbox's connections is the MySQL 8 path's, one
    row and no RETURNING, and there is at least one per order stored."""
    async with httpx.AsyncClient(timeout=10) as client:
        await complete_order_flow(client, portable.product_url, portable.order_url)
    name = portable.sandbox.name
    statements = general_log.statements_on(name)
    inserts = [
        sql for sql in statements if re.match(r"\s*INSERT INTO `?orders`?\s", sql, re.IGNORECASE)
    ]
    (count,) = (await _mysql(f"SELECT COUNT(*) FROM `{name}`.orders"))[0]  # noqa: S608
    assert inserts, f"no INSERT INTO orders in the general log among {len(statements)} statements"
    with_returning = [sql for sql in inserts if "RETURNING" in sql.upper()]
    assert not with_returning, with_returning[:3]
    multi_row = [sql for sql in inserts if re.search(r"\)\s*,\s*\(", sql)]
    assert not multi_row, multi_row[:3]
    assert len(inserts) >= int(str(count)) > 0, (len(inserts), count)

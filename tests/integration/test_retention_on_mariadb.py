"""Pruning past retention on the real MariaDB and PostgreSQL (and the embedded default's
SQLite): old sent
outbox rows and old inbox records go, in batches no larger than asked; recent rows and
unsent rows stay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack.messaging.retention import RetentionPruner, delete_in_batches
from orderstack.orders.repository import inbox, outbox
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture(params=["mariadb", "postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    if request.param == "sqlite":
        return make_url(f"sqlite+aiosqlite:///{tmp_path}/retention.db")
    name = "postgresql_sandbox" if request.param == "postgresql" else "sandbox"
    sandbox: Sandbox = request.getfixturevalue(name)
    return sandbox.engine_url


@pytest.fixture
async def db(db_url: URL) -> AsyncIterator[AsyncEngine]:
    """An empty orders outbox and inbox, migrated to head."""
    engine = create_engine(db_url, pool_size=2)
    await migrate.upgrade(engine, "orders")
    async with engine.begin() as conn:
        await conn.execute(outbox.delete())
        await conn.execute(inbox.delete())
    yield engine
    await engine.dispose()


async def _outbox_rows(engine: AsyncEngine, n: int, *, sent_ago: timedelta | None) -> set[str]:
    now = utcnow()
    rows = [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "order.created",
            "payload": "{}",
            "created_at": now - (sent_ago or timedelta()) - timedelta(seconds=1),
            "published_at": None if sent_ago is None else now - sent_ago,
        }
        for _ in range(n)
    ]
    async with engine.begin() as conn:
        await conn.execute(outbox.insert(), rows)
    return {r["event_id"] for r in rows}


async def _inbox_rows(engine: AsyncEngine, n: int, *, processed_ago: timedelta) -> set[str]:
    rows = [
        {
            "event_id": str(uuid.uuid4()),
            "event_type": "order.qty_confirmed",
            "processed_at": utcnow() - processed_ago,
        }
        for _ in range(n)
    ]
    async with engine.begin() as conn:
        await conn.execute(inbox.insert(), rows)
    return {r["event_id"] for r in rows}


async def _ids(engine: AsyncEngine, table: sa.Table) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(table.c.event_id))).scalars())


@pytest.fixture
def deletes(db: AsyncEngine) -> Iterator[list[int]]:
    """The row count of every DELETE the engine runs."""
    counts: list[int] = []

    def record(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            counts.append(cursor.rowcount)

    event.listen(db.sync_engine, "after_cursor_execute", record)
    yield counts
    event.remove(db.sync_engine, "after_cursor_execute", record)


async def test_old_sent_rows_and_old_inbox_records_go_the_rest_stay(
    db: AsyncEngine, deletes: list[int]
) -> None:
    old_sent = await _outbox_rows(db, 25, sent_ago=2 * HOUR)
    recent_sent = await _outbox_rows(db, 5, sent_ago=10 * timedelta(minutes=1))
    unsent = await _outbox_rows(db, 5, sent_ago=None)  # created long enough ago, never sent
    old_seen = await _inbox_rows(db, 23, processed_ago=8 * DAY)
    recent_seen = await _inbox_rows(db, 4, processed_ago=6 * DAY)

    pruner = RetentionPruner(
        db,
        outbox=outbox,
        inbox=inbox,
        outbox_retention=HOUR,
        inbox_retention=7 * DAY,
        batch_size=10,
        pause=0,
    )
    pruned = await pruner.prune_once()

    assert (pruned.outbox, pruned.inbox) == (25, 23)
    assert await _ids(db, outbox) == recent_sent | unsent
    assert await _ids(db, inbox) == recent_seen
    assert not old_sent & await _ids(db, outbox) and not old_seen & await _ids(db, inbox)
    # 25 = 10 + 10 + 5 and 23 = 10 + 10 + 3: no statement deleted more than a batch
    assert deletes == [10, 10, 5, 10, 10, 3]

    again = await pruner.prune_once()
    assert (again.outbox, again.inbox) == (0, 0)
    assert pruner.pruned.outbox == 25 and pruner.pruned.inbox == 23


async def test_an_exact_multiple_of_the_batch_ends_with_an_empty_look(
    db: AsyncEngine, deletes: list[int]
) -> None:
    await _inbox_rows(db, 6, processed_ago=2 * DAY)
    deleted = await delete_in_batches(
        db, inbox.c.event_id, inbox.c.processed_at < utcnow() - DAY, batch_size=3
    )
    assert deleted == 6
    assert deletes == [3, 3]  # then a select that found nothing: no empty DELETE
    assert await _ids(db, inbox) == set()


async def test_the_inbox_age_index_migrates_down_and_up(db: AsyncEngine) -> None:
    await migrate.upgrade(db, "products")

    async def index_names() -> set[str]:
        def names(conn: sa.Connection) -> set[str]:
            return {ix["name"] or "" for ix in sa.inspect(conn).get_indexes("products_inbox")}

        async with db.connect() as conn:
            return await conn.run_sync(names)

    assert "ix_products_inbox_processed_at" in await index_names()
    while (await _revision(db)) != "products_0002":  # the index's (products_0003) and later
        await migrate.downgrade(db, "products", 1)
    assert "ix_products_inbox_processed_at" not in await index_names()
    await migrate.upgrade(db, "products")
    assert "ix_products_inbox_processed_at" in await index_names()


async def _revision(db: AsyncEngine) -> str | None:
    async with db.connect() as conn:
        return await conn.scalar(sa.text("SELECT version_num FROM alembic_version_products"))

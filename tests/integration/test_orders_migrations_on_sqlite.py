"""Order migrations and the sweeper's claim on SQLite, the embedded default's database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.orders.domain import NewOrder, OrderLine
from orderstack.orders.repository import OrderUnitOfWork
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"))
    await migrate.upgrade(engine, "orders")
    yield engine
    await engine.dispose()


async def columns_and_indexes(engine: AsyncEngine) -> tuple[set[str], set[str]]:
    def read(conn: sa.Connection) -> tuple[set[str], set[str]]:
        inspector = sa.inspect(conn)
        return (
            {c["name"] for c in inspector.get_columns("orders")},
            {str(i["name"]) for i in inspector.get_indexes("orders")},
        )

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(sa.text("SELECT version_num FROM alembic_version_orders"))


async def test_orders_0002_goes_down_and_up_keeping_the_orders(sqlite: AsyncEngine) -> None:
    async with OrderUnitOfWork(sqlite, None) as uow:
        [kept] = await uow.orders.add_many(
            [NewOrder((OrderLine(1, 1),), Decimal("2.50"), "Key")], utcnow()
        )
        await uow.commit()
    columns, indexes = await columns_and_indexes(sqlite)
    assert "request_fingerprint" in columns and "ix_orders_status_updated_at" in indexes

    while await current_revision(sqlite) != "orders_0001":
        await migrate.downgrade(sqlite, "orders", 1)
    columns, indexes = await columns_and_indexes(sqlite)
    assert "request_fingerprint" not in columns
    assert "ix_orders_status_updated_at" not in indexes

    await migrate.upgrade(sqlite, "orders")
    async with OrderUnitOfWork(sqlite, None) as uow:
        found = await uow.orders.by_request_id("Key")
        assert found == (kept, None)
        assert await uow.orders.by_request_id("key") is None  # SQLite compares exactly


async def test_claiming_stale_orders_works_without_row_locks(sqlite: AsyncEngine) -> None:
    """SQLite has no FOR UPDATE: the clause is left out and the claim still happens once."""
    old = utcnow() - timedelta(hours=1)
    async with OrderUnitOfWork(sqlite, None) as uow:
        made = await uow.orders.add_many(
            [NewOrder((OrderLine(1, 1),), Decimal(1)) for _ in range(3)], old
        )
        await uow.commit()
    cutoff = utcnow() - timedelta(seconds=30)

    async with OrderUnitOfWork(sqlite, None) as uow:
        claimed = await uow.orders.claim_stale_pending(cutoff, 2, utcnow())
        await uow.commit()
    async with OrderUnitOfWork(sqlite, None) as uow:
        rest = await uow.orders.claim_stale_pending(cutoff, 10, utcnow())
        again = await uow.orders.claim_stale_pending(cutoff, 10, utcnow())
        await uow.commit()

    assert [o.id for o in claimed + rest] == [o.id for o in made]
    assert again == []


async def test_orders_0004_adds_and_removes_the_query_indexes(sqlite: AsyncEngine) -> None:
    query_indexes = {"ix_orders_status_id", "ix_orders_product_id_status_id"}
    _, indexes = await columns_and_indexes(sqlite)
    assert query_indexes <= indexes

    while await current_revision(sqlite) != "orders_0003":  # later revisions first
        await migrate.downgrade(sqlite, "orders", 1)
    _, indexes = await columns_and_indexes(sqlite)
    assert not query_indexes & indexes
    assert {"ix_orders_product_id_id", "ix_orders_status_updated_at"} <= indexes

    await migrate.upgrade(sqlite, "orders")
    _, indexes = await columns_and_indexes(sqlite)
    assert query_indexes <= indexes

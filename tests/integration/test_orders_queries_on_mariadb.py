"""Listing orders on the real MariaDB: the query indexes of orders_0004, filters, and a
cursor walk that returns every order once, in id order, while orders keep arriving."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.storage import migrate

pytestmark = pytest.mark.integration

QUERY_INDEXES = {"ix_orders_status_id", "ix_orders_product_id_status_id"}


async def _indexes(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda c: {str(ix["name"]) for ix in sa.inspect(c).get_indexes("orders")}
        )


async def _revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(sa.text("SELECT version_num FROM alembic_version_orders"))


async def test_orders_0004_adds_and_removes_the_query_indexes(engine: AsyncEngine) -> None:
    assert await _indexes(engine) >= QUERY_INDEXES
    while await _revision(engine) != "orders_0003":
        await migrate.downgrade(engine, "orders", 1)
    indexes = await _indexes(engine)
    assert not QUERY_INDEXES & indexes
    assert {"ix_orders_product_id_id", "ix_orders_status_updated_at"} <= indexes

    await migrate.upgrade(engine, "orders")
    assert await _indexes(engine) >= QUERY_INDEXES
    await migrate.upgrade(engine, "orders")  # at head: nothing to do
    assert await _revision(engine) == "orders_0004"

"""Storing orders in batches against the real MariaDB: each order gets its own row."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.orders.domain import NewOrder, OrderLine
from orderstack.orders.repository import OrderUnitOfWork, orders
from orderstack.storage.types import utcnow

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "mysql8-path"])
async def test_a_batch_insert_hands_each_order_the_id_of_its_own_row(
    engine: AsyncEngine, returning: bool
) -> None:
    """Group commit answers each client with the id its row got, from ``INSERT … RETURNING``
    or, as on MySQL 8, from one INSERT per order; if the ids came back in another order, a
    client would be told of someone else's order."""
    new = [NewOrder((OrderLine(1 + i % 7, 1),), Decimal(i) / 4) for i in range(150)]

    async def store(batch: list[NewOrder]) -> list[tuple[int, int, Decimal]]:
        async with OrderUnitOfWork(engine, None, insert_returning=returning) as uow:
            stored = await uow.orders.add_many(batch, utcnow())
            await uow.commit()
        return [(o.id, o.product_id, o.total_price) for o in stored]

    answered = [
        row
        for rows in await asyncio.gather(*(store(new[i : i + 50]) for i in range(0, 150, 50)))
        for row in rows
    ]

    async with engine.connect() as conn:
        in_table = {
            r.id: (r.id, r.product_id, r.total_price)
            for r in await conn.execute(
                sa.select(orders.c.id, orders.c.product_id, orders.c.total_price).where(
                    orders.c.id.in_([a[0] for a in answered])
                )
            )
        }
    assert len({a[0] for a in answered}) == 150
    assert [in_table[a[0]] for a in answered] == answered
    assert [(p, t) for _, p, t in answered] == [(n.items[0].product_id, n.total_price) for n in new]


async def test_the_server_decides_whether_returning_is_used(engine: AsyncEngine) -> None:
    """MariaDB 10.5+ has INSERT … RETURNING; the repository asks the dialect, which knows
    the server's version (MySQL 8 answers no, and takes the per-row path)."""
    async with OrderUnitOfWork(engine, None) as uow:
        assert uow.orders._returning is engine.dialect.insert_returning is True

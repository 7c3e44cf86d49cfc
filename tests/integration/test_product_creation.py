"""Creating products in batches (group commit) on the real servers: each client gets its
own row's id, its opening ledger entry and its own ``product_created``, with its request's
id, on both ways of reading the new ids (``INSERT … RETURNING``, and MySQL 8's one INSERT
per row)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import orjson
import pytest
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.logging import REQUEST_ID_KEY
from orderstack.products.domain import NewProduct
from orderstack.products.repository import (
    ProductUnitOfWork,
    outbox,
    products,
    stock_adjustments,
)
from orderstack.products.service import ProductService
from orderstack.storage.types import utcnow

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "mysql8-path"])
async def test_a_batch_insert_hands_each_product_the_id_of_its_own_row(
    engine: AsyncEngine, returning: bool
) -> None:
    new = [NewProduct(f"batch-{i}", Decimal(i + 1) / 4, i) for i in range(150)]

    async def store(batch: list[NewProduct]) -> list[tuple[int, str, int]]:
        async with ProductUnitOfWork(engine, None, insert_returning=returning) as uow:
            stored = await uow.products.add_many(batch, utcnow())
            await uow.products.record_openings(stored, "created", utcnow())
            await uow.commit()
        return [(p.id, p.name, p.qty) for p in stored]

    answered = [
        row
        for rows in await asyncio.gather(*(store(new[i : i + 50]) for i in range(0, 150, 50)))
        for row in rows
    ]
    ids = [a[0] for a in answered]
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(products.c.id, products.c.name, products.c.qty).where(products.c.id.in_(ids))
        )
        in_table = {r.id: (r.id, r.name, r.qty) for r in rows}
        openings = {
            r.product_id: (r.delta, r.qty_after, r.reason)
            for r in await conn.execute(
                sa.select(stock_adjustments).where(stock_adjustments.c.product_id.in_(ids))
            )
        }
    assert len(set(ids)) == 150
    assert [in_table[i] for i in ids] == answered
    assert [(name, qty) for _, name, qty in answered] == [(n.name, n.qty) for n in new]
    assert openings == {i: (qty, qty, "created") for i, _, qty in answered}


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "mysql8-path"])
async def test_concurrent_creations_share_transactions_and_keep_their_own_origin(
    engine: AsyncEngine, returning: bool
) -> None:
    service = ProductService(
        lambda: ProductUnitOfWork(engine, None, insert_returning=returning),
        InProcessProductCache(),
    )

    async def create(i: int) -> tuple[str, int]:
        with structlog.contextvars.bound_contextvars(**{REQUEST_ID_KEY: f"req-{returning}-{i}"}):
            product = await service.create_product(f"concurrent-{i}", Decimal(5), i)
        assert (product.name, product.qty, product.version) == (f"concurrent-{i}", i, 1)
        return f"req-{returning}-{i}", product.id

    created = dict(await asyncio.gather(*(create(i) for i in range(60))))
    async with engine.connect() as conn:
        events = list(
            await conn.execute(
                sa.select(outbox.c.payload, outbox.c.request_id, outbox.c.created_at).where(
                    outbox.c.request_id.in_(list(created))
                )
            )
        )
    assert len(events) == 60
    for event in events:
        payload = orjson.loads(event.payload)
        body = payload.get("data", payload)
        assert body["id"] == created[event.request_id]
    # Fewer transactions than products: creations that came together were written together.
    assert len({e.created_at for e in events}) < 60

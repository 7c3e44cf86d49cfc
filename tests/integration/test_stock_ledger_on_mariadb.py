"""The stock ledger, stock adjustments, versioned updates, re-sent answers and products
migration 0002, against the real MariaDB (and the migration on the embedded SQLite)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.invariants import ledger_violations, ledger_violations_on
from harness.sandbox import Sandbox
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.products.domain import InsufficientStock, ReserveStock, VersionMismatch
from orderstack.products.repository import (
    ProductUnitOfWork,
    outbox,
    products,
    stock_adjustments,
    stock_reservations,
)
from orderstack.products.service import ProductService
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow

pytestmark = pytest.mark.integration


def _service(engine: AsyncEngine, cache: InProcessProductCache | None = None) -> ProductService:
    return ProductService(lambda: ProductUnitOfWork(engine, None), cache or InProcessProductCache())


async def _reserve(engine: AsyncEngine, service: ProductService, *requests: ReserveStock) -> None:
    async with ProductUnitOfWork(engine, None) as uow:
        await service.reserve_stock(uow, requests)
        await uow.commit()


# -- many writers on one product ---------------------------------------------------------


async def test_ledger_balances_under_concurrent_reservations_adjustments_and_patches(
    engine: AsyncEngine, sandbox: Sandbox
) -> None:
    """Reservation batches (as several consumers' transactions), relative adjustments both
    ways and absolute PATCHes of qty, all at once on one product: qty never below zero,
    and units confirmed = sum(adjustments) - qty."""
    cache = InProcessProductCache()
    service = _service(engine, cache)
    product = await service.create_product("Hot item", Decimal("9.99"), 20)
    rng = random.Random(11)
    order_ids = iter(range(70_000, 80_000))
    refused: list[str] = []

    async def reservations() -> None:
        batch = [ReserveStock(next(order_ids), product.id) for _ in range(rng.randint(1, 5))]
        await _reserve(engine, service, *batch)

    async def adjustment() -> None:
        try:
            await service.adjust_stock(product.id, rng.choice([-4, -2, -1, 1, 3, 6]), "mixed")
        except InsufficientStock:
            refused.append("adjust")

    async def patch() -> None:
        await service.update_product(product.id, {"qty": rng.randint(0, 15)})

    work: list[Awaitable[None]] = []
    for _ in range(8):
        work += [reservations() for _ in range(20)]
        work += [adjustment() for _ in range(10)]
        work += [patch() for _ in range(3)]
    rng.shuffle(work)  # type: ignore[arg-type]
    await asyncio.gather(*work)

    assert await ledger_violations(sandbox.database_url, [product.id]) == []
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(products.c.qty, products.c.version).where(products.c.id == product.id)
            )
        ).one()
        reasons = dict(
            (
                await conn.execute(
                    sa.select(stock_adjustments.c.reason, sa.func.count())
                    .where(stock_adjustments.c.product_id == product.id)
                    .group_by(stock_adjustments.c.reason)
                )
            ).all()
        )
    assert row.qty >= 0
    assert reasons["created"] == 1
    assert reasons["mixed"] + len(refused) == 80
    assert reasons.get("patch", 0) <= 24
    [entry] = await cache.get_many([product.id], await service.epoch.current())
    assert entry is not None
    assert (entry.qty, entry.version) == (row.qty, row.version)


async def test_a_violation_is_reported(engine: AsyncEngine) -> None:
    """The check is not vacuous: a qty changed behind the ledger's back shows up."""
    product = await _service(engine).create_product("Tampered", Decimal(1), 5)
    async with engine.begin() as conn:
        await conn.execute(products.update().where(products.c.id == product.id).values(qty=7))
        [violation] = await ledger_violations_on(conn, [product.id])
    assert "ledger adds up to 5 - qty 7" in violation


# -- adjustments and If-Match ------------------------------------------------------------


async def test_adjustment_below_zero_changes_nothing(engine: AsyncEngine) -> None:
    service = _service(engine)
    product = await service.create_product("Few", Decimal(1), 2)

    with pytest.raises(InsufficientStock):
        await service.adjust_stock(product.id, -3, "loss")
    adjustment, after = await service.adjust_stock(product.id, -2, "loss")

    assert (adjustment.qty_after, after.qty, after.version) == (0, 0, product.version + 1)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(stock_adjustments.c.delta, stock_adjustments.c.reason)
                .where(stock_adjustments.c.product_id == product.id)
                .order_by(stock_adjustments.c.id)
            )
        ).all()
    assert [tuple(r) for r in rows] == [(2, "created"), (-2, "loss")]


async def test_concurrent_patches_with_the_same_if_match_apply_once(engine: AsyncEngine) -> None:
    service = _service(engine)
    product = await service.create_product("Contended", Decimal(1), 5)

    async def patch(qty: int) -> str:
        try:
            await service.update_product(product.id, {"qty": qty}, [product.version])
        except VersionMismatch:
            return "412"
        return "applied"

    outcomes = await asyncio.gather(*(patch(q) for q in range(10, 20)))

    assert outcomes.count("applied") == 1
    current = await service.get_product(product.id)
    assert current.version == product.version + 1
    async with engine.connect() as conn:
        assert await ledger_violations_on(conn, [product.id]) == []


async def test_if_match_without_qty_is_checked_by_the_update(engine: AsyncEngine) -> None:
    service = _service(engine)
    product = await service.create_product("Named", Decimal(1), 5)
    await _reserve(engine, service, ReserveStock(90_001, product.id))

    with pytest.raises(VersionMismatch):
        await service.update_product(product.id, {"name": "Renamed"}, [product.version])
    renamed = await service.update_product(product.id, {"name": "Renamed"}, [product.version + 1])

    assert (renamed.name, renamed.qty, renamed.version) == ("Renamed", 4, product.version + 2)


# -- answers sent again ------------------------------------------------------------------


async def test_order_asked_again_gets_its_recorded_answer_and_takes_nothing(
    engine: AsyncEngine,
) -> None:
    service = _service(engine)
    product = await service.create_product("One left", Decimal(1), 1)
    await _reserve(
        engine, service, ReserveStock(91_001, product.id), ReserveStock(91_002, product.id)
    )

    await _reserve(
        engine, service, ReserveStock(91_001, product.id), ReserveStock(91_002, product.id)
    )

    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(outbox.c.event_id, outbox.c.event_type, outbox.c.payload).where(
                    outbox.c.event_type.like("order.qty_%")
                )
            )
        ).all()
        qty = await conn.scalar(sa.select(products.c.qty).where(products.c.id == product.id))
    mine = [r for r in rows if '"orderId":91' in str(r.payload).replace(" ", "")]
    assert sorted((r.event_type, '"orderId":91001' in str(r.payload)) for r in mine) == [
        ("order.qty_confirmed", True),
        ("order.qty_confirmed", True),
        ("order.qty_failed", False),
        ("order.qty_failed", False),
    ]
    assert len({r.event_id for r in mine}) == 4
    assert qty == 0


# -- migration 0002 ----------------------------------------------------------------------


async def _columns(engine: AsyncEngine, table: str) -> dict[str, str]:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda c: {col["name"]: str(col["type"]) for col in sa.inspect(c).get_columns(table)}
        )


async def _indexes(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda c: {str(ix["name"]) for ix in sa.inspect(c).get_indexes(table)}
        )


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


async def _down_to_0001(engine: AsyncEngine) -> None:
    """Step down, one revision at a time, until products_0001 (later revisions may exist)."""
    for _ in range(20):
        async with engine.connect() as conn:
            current = await conn.scalar(sa.text("SELECT version_num FROM alembic_version_products"))
        if current == "products_0001":
            return
        await migrate.downgrade(engine, "products", 1)
    raise AssertionError("products_0001 not reached")


async def _check_migration_0002_round_trip(engine: AsyncEngine) -> None:
    """Down to 0001, a product sold from there, up again: the opening balance makes its
    ledger complete; then down and up once more."""
    await _down_to_0001(engine)
    assert "stock_adjustments" not in await _tables(engine)
    assert "ix_products_updated_at" not in await _indexes(engine, "products")

    # A product of the 0001 era: created with 6, one unit confirmed to an order, qty 5.
    now = utcnow()
    async with engine.begin() as conn:
        result = await conn.execute(
            products.insert().values(
                name="Legacy", price=Decimal(3), qty=5, version=2, created_at=now, updated_at=now
            )
        )
        legacy_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        await conn.execute(
            stock_reservations.insert().values(
                order_id=99_000 + legacy_id,
                product_id=legacy_id,
                outcome="confirmed",
                created_at=now,
            )
        )

    await migrate.upgrade(engine, "products")
    assert "stock_adjustments" in await _tables(engine)
    assert "ix_products_updated_at" in await _indexes(engine, "products")
    async with engine.connect() as conn:
        opening = (
            await conn.execute(
                sa.select(
                    stock_adjustments.c.delta,
                    stock_adjustments.c.reason,
                    stock_adjustments.c.qty_after,
                ).where(stock_adjustments.c.product_id == legacy_id)
            )
        ).all()
        assert [tuple(r) for r in opening] == [(6, "opening balance", 5)]
        assert await ledger_violations_on(conn) == []

    await _down_to_0001(engine)
    await migrate.upgrade(engine, "products")
    assert "stock_adjustments" in await _tables(engine)


async def test_migration_0002_goes_down_and_up_on_mariadb(engine: AsyncEngine) -> None:
    assert "BIGINT" in (await _columns(engine, "products"))["version"].upper()
    await _down_to_0001(engine)
    assert "BIGINT" not in (await _columns(engine, "products"))["version"].upper()
    await migrate.upgrade(engine, "products")
    assert "BIGINT" in (await _columns(engine, "products"))["version"].upper()
    await _check_migration_0002_round_trip(engine)
    # The service works on the schema after the round trip.
    service = _service(engine)
    product = await service.create_product("After", Decimal(1), 3)
    await service.adjust_stock(product.id, 2, "restock")
    assert (await service.get_product(product.id)).qty == 5


async def test_migration_0002_goes_down_and_up_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'products.db'}"))
    try:
        await migrate.upgrade(engine, "products")
        await _check_migration_0002_round_trip(engine)
        service = _service(engine)
        product = await service.create_product("Embedded", Decimal(1), 3)
        await service.adjust_stock(product.id, -3, "loss")
        async with engine.connect() as conn:
            assert await ledger_violations_on(conn) == []
    finally:
        await engine.dispose()

"""Quantities and cancellations against the real MariaDB, with real concurrent transactions:
the stock take and the cancellation of one order, duplicated cancellations, a cancellation
before the order is seen; the order side's concurrent cancels and answers; migrations
products_0004 and orders_0005 down and up (MariaDB and SQLite)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.invariants import ledger_violations_on
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.orders.domain import (
    NewOrder,
    OrderLine,
    OrderNotCancellable,
    OrderStatus,
    SettleOrder,
)
from orderstack.orders.repository import OrderUnitOfWork, orders
from orderstack.orders.repository import outbox as orders_outbox
from orderstack.orders.service import OrderService
from orderstack.products.domain import CancelReservation, ReserveStock
from orderstack.products.repository import ProductUnitOfWork, products, stock_reservations
from orderstack.products.service import ProductService
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine, is_transient
from orderstack.storage.types import Money, UtcDateTime, utcnow
from tests.unit.fakes import FakeCatalog

pytestmark = pytest.mark.integration

Command = ReserveStock | CancelReservation


def _products(engine: AsyncEngine, cache: InProcessProductCache | None = None) -> ProductService:
    return ProductService(lambda: ProductUnitOfWork(engine, None), cache or InProcessProductCache())


async def _apply(engine: AsyncEngine, service: ProductService, *commands: Command) -> None:
    async with ProductUnitOfWork(engine, None) as uow:
        await service.apply_order_events(uow, commands)
        await uow.commit()


async def _qty(engine: AsyncEngine, product_id: int) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(sa.select(products.c.qty).where(products.c.id == product_id)) or 0
        )


async def _outcomes(engine: AsyncEngine, order_ids: list[int]) -> dict[int, tuple[str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                stock_reservations.c.order_id,
                stock_reservations.c.outcome,
                stock_reservations.c.quantity,
            ).where(stock_reservations.c.order_id.in_(order_ids))
        )
        return {r.order_id: (r.outcome, r.quantity) for r in rows}


async def _ledger(engine: AsyncEngine, product_id: int) -> list[str]:
    async with engine.connect() as conn:
        return await ledger_violations_on(conn, [product_id])


# -- the product service -----------------------------------------------------------------


async def test_cancels_concurrent_with_the_stock_take_give_back_exactly_what_was_taken(
    engine: AsyncEngine,
) -> None:
    """Each order's order.created and order.cancelled in two concurrent transactions (as two
    replicas' consumers), with other orders' takes in between: whichever commits first,
    a cancelled order ends holding nothing, and the ledger balances."""
    cache = InProcessProductCache()
    service = _products(engine, cache)
    product = await service.create_product("Raced", Decimal(5), 40)
    rng = random.Random(7)
    ids = list(range(210_000, 210_060))
    quantity = {order_id: rng.randint(1, 4) for order_id in ids}
    cancelled = set(rng.sample(ids, 30))
    work: list[Command] = [ReserveStock(o, product.id, quantity[o]) for o in ids]
    work += [CancelReservation(o, product.id, quantity[o]) for o in cancelled]
    rng.shuffle(work)

    await asyncio.gather(*(_apply(engine, service, command) for command in work))

    outcomes = await _outcomes(engine, ids)
    assert {o for o, (outcome, _) in outcomes.items() if outcome == "cancelled"} == cancelled
    held = sum(q for outcome, q in outcomes.values() if outcome == "confirmed")
    qty = await _qty(engine, product.id)
    assert held + qty == 40
    assert await _ledger(engine, product.id) == []
    [entry] = await cache.get_many([product.id], await service.epoch.current())
    assert entry is not None and entry.qty == qty


async def test_a_duplicated_cancellation_in_concurrent_transactions_gives_back_once(
    engine: AsyncEngine,
) -> None:
    service = _products(engine)
    product = await service.create_product("Twice", Decimal(5), 10)
    await _apply(engine, service, ReserveStock(220_001, product.id, 4))
    assert await _qty(engine, product.id) == 6

    cancel = CancelReservation(220_001, product.id, 4)
    await asyncio.gather(*(_apply(engine, service, cancel) for _ in range(4)))

    assert await _qty(engine, product.id) == 10
    assert await _outcomes(engine, [220_001]) == {220_001: ("cancelled", 4)}
    assert await _ledger(engine, product.id) == []


async def test_order_created_after_its_cancellation_takes_nothing(engine: AsyncEngine) -> None:
    service = _products(engine)
    product = await service.create_product("Late", Decimal(5), 3)

    await _apply(engine, service, CancelReservation(230_001, product.id, 2))
    await _apply(engine, service, ReserveStock(230_001, product.id, 2))

    assert await _qty(engine, product.id) == 3
    assert await _outcomes(engine, [230_001]) == {230_001: ("cancelled", 2)}
    assert await _ledger(engine, product.id) == []


# -- the order service -------------------------------------------------------------------


def _orders(engine: AsyncEngine) -> OrderService:
    return OrderService(lambda: OrderUnitOfWork(engine, None), FakeCatalog(known={1}))


async def _cancelled_events(engine: AsyncEngine, order_id: int) -> int:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(orders_outbox.c.payload).where(
                orders_outbox.c.event_type == "order.cancelled"
            )
        )
        return sum(1 for r in rows if orjson.loads(r.payload)["orderId"] == order_id)


async def test_concurrent_cancellations_of_one_order_write_one_event(engine: AsyncEngine) -> None:
    service = _orders(engine)
    order, _ = await service.create_order(1, Decimal(9), quantity=2)

    results = await asyncio.gather(*(service.cancel_order(order.id) for _ in range(6)))

    assert sorted(now for _, now in results) == [False] * 5 + [True]
    assert all(o.status is OrderStatus.CANCELLED for o, _ in results)
    assert await _cancelled_events(engine, order.id) == 1


@pytest.mark.parametrize("answer", [OrderStatus.CONFIRMED, OrderStatus.FAILED])
async def test_a_cancel_racing_an_answer_ends_one_way_only(
    engine: AsyncEngine, answer: OrderStatus
) -> None:
    """A cancel and the product service's answer, in concurrent transactions: the order
    ends cancelled (an order.cancelled written: the product service gives back whatever it
    took) or failed (the cancel refused, no event); a confirmed answer that wins is
    cancelled after it."""
    service = _orders(engine)
    created = [(await service.create_order(1, Decimal(9)))[0] for _ in range(20)]

    async def settle(order_id: int) -> None:
        # As the consumer applies an answer: a transient failure (a deadlock with the
        # cancel's transaction, InnoDB's loser) runs the batch again (consumer.py).
        for attempt in range(3):
            try:
                async with OrderUnitOfWork(engine, None) as uow:
                    await service.settle_orders(uow, [SettleOrder(order_id, answer)])
                    await uow.commit()
                return
            except DBAPIError as exc:
                if attempt == 2 or not is_transient(exc):
                    raise

    async def cancel(order_id: int) -> str:
        try:
            await service.cancel_order(order_id)
        except OrderNotCancellable:
            return "refused"
        return "cancelled"

    results = await asyncio.gather(*(asyncio.gather(cancel(o.id), settle(o.id)) for o in created))

    for order, (outcome, _) in zip(created, results, strict=True):
        status = (await service.get_order(order.id)).status
        events = await _cancelled_events(engine, order.id)
        if outcome == "cancelled":
            assert (status, events) == (OrderStatus.CANCELLED, 1)
        else:
            assert answer is OrderStatus.FAILED
            assert (status, events) == (OrderStatus.FAILED, 0)


# -- migrations --------------------------------------------------------------------------


async def _columns(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda c: {str(col["name"]) for col in sa.inspect(c).get_columns(table)}
        )


async def _down_to(engine: AsyncEngine, service: migrate.ServiceName, revision: str) -> None:
    """Step down, one revision at a time, until ``revision`` (later revisions may exist)."""
    for _ in range(20):
        async with engine.connect() as conn:
            current = await conn.scalar(
                sa.text(f"SELECT version_num FROM alembic_version_{service}")  # noqa: S608
            )
        if current == revision:
            return
        await migrate.downgrade(engine, service, 1)
    raise AssertionError(f"{revision} not reached")


async def _migrations_keep_the_rows(engine: AsyncEngine) -> None:
    """products_0004 and orders_0005 down and up again: rows kept, a quantity of 1 for the
    rows from before, cancelled reservations failed below 0004 (holding nothing)."""
    await _down_to(engine, "products", "products_0003")
    await _down_to(engine, "orders", "orders_0004")
    assert "quantity" not in await _columns(engine, "stock_reservations")
    assert "quantity" not in await _columns(engine, "orders")
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            sa.table(
                "stock_reservations",
                sa.column("order_id"),
                sa.column("product_id"),
                sa.column("outcome"),
                sa.column("created_at", UtcDateTime),
            ).insert(),
            [{"order_id": 240_001, "product_id": 1, "outcome": "confirmed", "created_at": now}],
        )
        await conn.execute(
            sa.table(
                "orders",
                sa.column("product_id"),
                sa.column("total_price", Money),
                sa.column("status"),
                sa.column("created_at", UtcDateTime),
                sa.column("updated_at", UtcDateTime),
            ).insert(),
            [
                {
                    "product_id": 1,
                    "total_price": Decimal(3),
                    "status": "pending",
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )

    await migrate.upgrade(engine, "products")
    await migrate.upgrade(engine, "orders")

    assert await _outcomes(engine, [240_001]) == {240_001: ("confirmed", 1)}
    async with engine.connect() as conn:
        quantities = set((await conn.execute(sa.select(orders.c.quantity))).scalars())
    assert quantities == {1}
    async with engine.begin() as conn:
        await conn.execute(
            stock_reservations.update()
            .where(stock_reservations.c.order_id == 240_001)
            .values(outcome="cancelled", quantity=3, cancelled_at=now)
        )
    await _down_to(engine, "products", "products_0003")
    async with engine.connect() as conn:
        outcome = await conn.scalar(
            sa.select(sa.column("outcome"))
            .select_from(sa.table("stock_reservations"))
            .where(sa.column("order_id") == 240_001)
        )
    assert outcome == "failed"
    await migrate.upgrade(engine, "products")
    assert await _outcomes(engine, [240_001]) == {240_001: ("failed", 1)}
    async with OrderUnitOfWork(engine, None) as uow:
        [stored] = await uow.orders.add_many([NewOrder((OrderLine(1, 7),), Decimal(2))], now)
        await uow.commit()
    async with OrderUnitOfWork(engine, None) as uow:
        found = await uow.orders.get(stored.id)
    assert found is not None and found.quantity == 7


async def test_migrations_go_down_and_up_keeping_the_rows_on_mariadb(engine: AsyncEngine) -> None:
    await _migrations_keep_the_rows(engine)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'both.db'}"))
    await migrate.upgrade(engine, "orders")
    await migrate.upgrade(engine, "products")
    yield engine
    await engine.dispose()


async def test_migrations_go_down_and_up_keeping_the_rows_on_sqlite(sqlite: AsyncEngine) -> None:
    await _migrations_keep_the_rows(sqlite)

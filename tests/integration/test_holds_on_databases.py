"""Holds on the real MariaDB and PostgreSQL, with real concurrent transactions: many
confirms of each reserved order racing the expiry sweeps of several "replicas" at the
instant its hold ends (exactly one winner per order, its units back exactly once); the
database's clock decides; migration orders_0011 down and up."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.invariants import ledger_violations_on
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.events import ORDER_EXPIRED
from orderstack.orders.domain import (
    OrderExpired,
    OrderNotCancellable,
    OrderNotReserved,
    OrderStatus,
    SettleOrder,
)
from orderstack.orders.repository import OrderUnitOfWork, database_clock, orders
from orderstack.orders.repository import outbox as orders_outbox
from orderstack.orders.service import OrderService
from orderstack.products.domain import CancelReservation, ReserveStock, StockLine
from orderstack.products.repository import ProductUnitOfWork, products
from orderstack.products.service import ProductService
from orderstack.storage import migrate
from orderstack.storage.types import utcnow
from tests.unit.fakes import FakeCatalog

pytestmark = pytest.mark.integration

ORDERS = 16  # reserved orders, each raced
CONFIRMS_PER_ORDER = 4
SWEEPERS = 3  # replicas sweeping at once
STOCK = 500


async def _qty(engine: AsyncEngine, product_id: int) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(sa.select(products.c.qty).where(products.c.id == product_id))
        return int(found or 0)


async def _expired_events(engine: AsyncEngine, order_ids: list[int]) -> Counter[int]:
    async with engine.connect() as conn:
        payloads = await conn.scalars(
            sa.select(orders_outbox.c.payload).where(
                orders_outbox.c.event_type == ORDER_EXPIRED.name
            )
        )
        found = Counter(orjson.loads(p)["orderId"] for p in payloads)
    return Counter({i: found[i] for i in order_ids if found[i]})


async def _reserved_orders(
    engine: AsyncEngine, count: int, quantities: list[int]
) -> tuple[OrderService, ProductService, int, list[int]]:
    """``count`` held orders of one new product, their units taken by the product service
    and the answers applied: reserved."""
    product_service = ProductService(
        lambda: ProductUnitOfWork(engine, None), InProcessProductCache()
    )
    product = await product_service.create_product("Lamp", Decimal("12.50"), STOCK)
    order_service = OrderService(
        lambda: OrderUnitOfWork(engine, None), FakeCatalog(known={product.id})
    )
    ids = []
    for quantity in quantities[:count]:
        order, _ = await order_service.create_order(product.id, quantity=quantity, hold_seconds=60)
        ids.append(order.id)
    async with ProductUnitOfWork(engine, None) as uow:
        await product_service.apply_order_events(
            uow,
            [
                ReserveStock(order_id, lines=(StockLine(product.id, q),))
                for order_id, q in zip(ids, quantities, strict=False)
            ],
        )
        await uow.commit()
    async with OrderUnitOfWork(engine, None) as uow:
        await order_service.settle_orders(uow, [SettleOrder(i, OrderStatus.CONFIRMED) for i in ids])
        await uow.commit()
    return order_service, product_service, product.id, ids


async def _give_back(
    engine: AsyncEngine, service: ProductService, product_id: int, order_ids: list[int]
) -> None:
    """Deliver every order.expired written for these orders to the product service, twice
    (a redelivery): it gives the units back once per order."""
    async with engine.connect() as conn:
        payloads = list(
            await conn.scalars(
                sa.select(orders_outbox.c.payload).where(
                    orders_outbox.c.event_type == ORDER_EXPIRED.name
                )
            )
        )
    commands = []
    for payload in payloads:
        data = orjson.loads(payload)
        if data["orderId"] in order_ids:
            lines = tuple(StockLine(i["productId"], i["quantity"]) for i in data["items"])
            commands.append(CancelReservation(data["orderId"], lines=lines))
    for _ in range(2):
        async with ProductUnitOfWork(engine, None) as uow:
            await service.apply_order_events(uow, commands)
            await uow.commit()


async def test_a_held_order_is_reserved_until_the_database_clock_passes_its_end(
    engine: AsyncEngine,
) -> None:
    order_service, _, product_id, ids = await _reserved_orders(engine, 1, [3])
    order = await order_service.get_order(ids[0])
    assert order.status is OrderStatus.RESERVED and order.expires_at is not None
    async with OrderUnitOfWork(engine, None) as uow:
        now = await uow.orders.database_now(order.created_at)
    # 60 s from the database's clock when it was reserved (a moment ago).
    assert timedelta(seconds=55) < order.expires_at - now <= timedelta(seconds=60)
    assert await order_service.expire_due(10) == 0
    assert await _qty(engine, product_id) == STOCK - 3


async def test_confirms_racing_the_expiry_have_one_winner_and_units_come_back_once(
    engine: AsyncEngine,
) -> None:
    rng = random.Random(23)
    quantities = [rng.randint(1, 5) for _ in range(ORDERS)]
    order_service, product_service, product_id, ids = await _reserved_orders(
        engine, ORDERS, quantities
    )
    # Every connection of the pool opened beforehand (asyncpg's first query on a new
    # connection is slow): the race is between transactions, not connection set-ups.
    await asyncio.gather(*(order_service.get_order(i) for i in ids for _ in range(2)))
    # Every hold ends 0.8 s from now on the database's clock; each order's confirms come
    # from 0.25 s before to 0.25 s after.
    async with engine.begin() as conn:
        db_now = await conn.scalar(sa.select(database_clock(conn, utcnow())))
        await conn.execute(
            orders.update()
            .where(orders.c.id.in_(ids))
            .values(expires_at=db_now + timedelta(seconds=0.8))
        )
    end = time.monotonic() + 0.8

    wins: Counter[int] = Counter()
    refusals: Counter[str] = Counter()

    async def confirm(order_id: int, at: float) -> None:
        await asyncio.sleep(max(0.0, end + at - time.monotonic()))
        try:
            _, now = await order_service.confirm_order(order_id, payment_reference="race")
        except OrderExpired:
            refusals["expired"] += 1
        except OrderNotReserved:
            refusals["not_reserved"] += 1  # pragma: no cover - a finding
        else:
            wins[order_id] += now

    async def sweep() -> None:
        while time.monotonic() < end + 0.3:
            await order_service.expire_due(5)
            await asyncio.sleep(0.005)

    await asyncio.gather(
        *(
            confirm(order_id, rng.uniform(-0.25, 0.25))
            for order_id in ids
            for _ in range(CONFIRMS_PER_ORDER)
        ),
        *(sweep() for _ in range(SWEEPERS)),
    )
    while await order_service.expire_due(50):
        pass

    async with engine.connect() as conn:
        status = {
            r.id: r.status
            for r in await conn.execute(
                sa.select(orders.c.id, orders.c.status).where(orders.c.id.in_(ids))
            )
        }
    expired = [i for i in ids if status[i] == "expired"]
    confirmed = [i for i in ids if status[i] == "confirmed"]
    assert sorted(expired + confirmed) == sorted(ids), status
    assert expired and confirmed, f"the race had no contest: {refusals}, {wins}"
    # Exactly one winner: a confirmed order was confirmed by one call; an expired one by none.
    assert {i: wins[i] for i in ids} == {i: int(i in confirmed) for i in ids}
    assert refusals["not_reserved"] == 0
    # Each expired order's order.expired written once, none for a confirmed one.
    assert await _expired_events(engine, ids) == Counter(dict.fromkeys(expired, 1))

    await _give_back(engine, product_service, product_id, ids)
    held = sum(q for i, q in zip(ids, quantities, strict=True) if i in confirmed)
    assert await _qty(engine, product_id) == STOCK - held
    async with engine.connect() as conn:
        assert await ledger_violations_on(conn, [product_id]) == []


async def test_a_cancel_racing_the_expiry_has_one_winner(engine: AsyncEngine) -> None:
    order_service, _, _, ids = await _reserved_orders(engine, 8, [1] * 8)
    async with engine.begin() as conn:  # every hold ended a second ago
        db_now = await conn.scalar(sa.select(database_clock(conn, utcnow())))
        await conn.execute(
            orders.update()
            .where(orders.c.id.in_(ids))
            .values(expires_at=db_now - timedelta(seconds=1))
        )

    async def cancel(order_id: int) -> bool:
        try:
            _, now = await order_service.cancel_order(order_id)
        except OrderNotCancellable:  # expired first
            return False
        return now

    cancelled, _ = await asyncio.gather(
        asyncio.gather(*(cancel(i) for i in ids)), order_service.expire_due(100)
    )
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(orders.c.id, orders.c.status).where(orders.c.id.in_(ids))
        )
        status = {row.id: row.status for row in rows}
    expired = Counter(await _expired_events(engine, ids))
    for order_id, now in zip(ids, cancelled, strict=True):
        assert status[order_id] == ("cancelled" if now else "expired")
        assert expired[order_id] == (0 if now else 1)


async def _revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        found = await conn.scalar(sa.text("SELECT version_num FROM alembic_version_orders"))
        return None if found is None else str(found)


async def test_orders_0011_goes_down_and_up(engine: AsyncEngine) -> None:
    # Down one step at a time (later revisions may exist) until orders_0011 is undone.
    for _ in range(20):
        if await _revision(engine) == "orders_0010":
            break
        await migrate.downgrade(engine, "orders", 1)
    assert await _revision(engine) == "orders_0010"
    async with engine.connect() as conn:
        columns = await conn.run_sync(
            lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("orders")}
        )
    assert not {"hold_seconds", "expires_at", "payment_reference"} & columns
    await migrate.upgrade(engine, "orders")
    async with engine.connect() as conn:
        columns = await conn.run_sync(
            lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("orders")}
        )
    assert {"hold_seconds", "expires_at", "payment_reference"} <= columns

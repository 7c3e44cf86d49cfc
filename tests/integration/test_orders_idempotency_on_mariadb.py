"""Idempotency keys, the pending-order sweeper and migration orders_0002 on the real MariaDB
(and, but for the collation's migration, on PostgreSQL, where keys compare exactly as is)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.orders.domain import IdempotencyKeyReused, NewOrder, Order, OrderLine
from orderstack.orders.repository import OrderUnitOfWork, orders, outbox
from orderstack.orders.service import OrderService
from orderstack.storage import migrate
from orderstack.storage.types import utcnow
from tests.unit.fakes import FakeCatalog

pytestmark = pytest.mark.integration


@pytest.fixture
def service(engine: AsyncEngine) -> OrderService:
    return OrderService(lambda: OrderUnitOfWork(engine, None), FakeCatalog(known={1, 2}))


async def orders_with_key(engine: AsyncEngine, key: str) -> list[int]:
    async with engine.connect() as conn:
        if conn.dialect.name == "mysql":  # byte for byte, whatever the column's collation
            exact = sa.func.binary(orders.c.request_id) == sa.func.binary(sa.literal(key))
        else:  # PostgreSQL's deterministic collations compare exactly
            exact = orders.c.request_id == key
        rows = await conn.execute(sa.select(orders.c.id).where(exact).order_by(orders.c.id))
        return [r.id for r in rows]


# -- idempotency keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "twin"),
    [pytest.param("abc", "ABC", id="case"), pytest.param("ä-key", "a-key", id="accent")],
)
async def test_keys_differing_only_in_case_or_accents_are_two_orders(
    service: OrderService, engine: AsyncEngine, key: str, twin: str
) -> None:
    first, first_created = await service.create_order(1, Decimal(10), request_id=key)
    second, second_created = await service.create_order(1, Decimal(10), request_id=twin)

    assert first_created and second_created
    assert first.id != second.id
    assert await orders_with_key(engine, key) == [first.id]
    assert await orders_with_key(engine, twin) == [second.id]
    # Each key still replays its own order.
    assert await service.create_order(1, Decimal(10), request_id=key) == (first, False)
    assert await service.create_order(1, Decimal(10), request_id=twin) == (second, False)


async def test_a_key_with_a_trailing_space_is_another_key(
    service: OrderService,
) -> None:
    plain, _ = await service.create_order(1, Decimal(10), request_id="pad")
    padded, created = await service.create_order(1, Decimal(10), request_id="pad ")

    assert created and padded.id != plain.id


async def test_same_key_with_another_body_is_refused_and_stores_nothing(
    service: OrderService, engine: AsyncEngine
) -> None:
    first, _ = await service.create_order(1, Decimal("10.50"), request_id="mismatch")
    async with engine.connect() as conn:
        before = await conn.scalar(sa.select(sa.func.count()).select_from(orders))
        events_before = await conn.scalar(sa.select(sa.func.count()).select_from(outbox))

    with pytest.raises(IdempotencyKeyReused):
        await service.create_order(1, Decimal("10.51"), request_id="mismatch")
    with pytest.raises(IdempotencyKeyReused):
        await service.create_order(2, Decimal("10.50"), request_id="mismatch")

    async with engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(orders)) == before
        assert await conn.scalar(sa.select(sa.func.count()).select_from(outbox)) == events_before
    assert await service.create_order(1, Decimal("10.5"), request_id="mismatch") == (first, False)


async def test_concurrent_twins_with_another_body_create_one_order(
    service: OrderService, engine: AsyncEngine
) -> None:
    results = await asyncio.gather(
        *(service.create_order(1 + i % 2, Decimal(10), request_id="race") for i in range(6)),
        return_exceptions=True,
    )

    stored = await orders_with_key(engine, "race")
    assert len(stored) == 1
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, IdempotencyKeyReused)
        else:
            assert result[0].id == stored[0]


# -- the sweeper --------------------------------------------------------------------------


async def stale_orders(engine: AsyncEngine, count: int) -> list[Order]:
    """Pending orders last touched an hour ago (whose order.created was lost)."""
    async with OrderUnitOfWork(engine, None) as uow:
        made: list[Order] = await uow.orders.add_many(
            [NewOrder((OrderLine(7, 1),), Decimal(3)) for _ in range(count)],
            utcnow() - timedelta(hours=1),
        )
        await uow.commit()
    return made


async def resent_counts(engine: AsyncEngine, ids: list[int]) -> Counter[int]:
    async with engine.connect() as conn:
        payloads = (
            await conn.execute(
                sa.select(outbox.c.payload).where(outbox.c.event_type == "order.created")
            )
        ).scalars()
        counts = Counter(orjson.loads(p)["orderId"] for p in payloads)
    return Counter({i: counts[i] for i in ids})


async def test_two_sweepers_at_once_never_resend_the_same_order(
    engine: AsyncEngine, service: OrderService
) -> None:
    made = await stale_orders(engine, 40)
    twin = OrderService(lambda: OrderUnitOfWork(engine, None), FakeCatalog())

    counts = await asyncio.gather(
        *(s.resend_stale_pending(30, batch=8) for s in (service, twin) for _ in range(3))
    )

    resent = await resent_counts(engine, [o.id for o in made])
    assert sum(counts) > 0
    assert max(resent.values()) == 1  # none twice in this round
    assert sum(resent.values()) == sum(counts)
    # What this round skipped (locked by the twin at that instant) the next round takes.
    await service.resend_stale_pending(30, batch=100)
    assert set((await resent_counts(engine, [o.id for o in made])).values()) == {1}


async def test_a_sweeper_skips_the_orders_another_one_holds(engine: AsyncEngine) -> None:
    """The other sweeper's transaction is still open: its rows are locked, not waited for."""
    made = await stale_orders(engine, 6)
    cutoff = utcnow() - timedelta(seconds=30)
    async with OrderUnitOfWork(engine, None) as first:
        held = await first.orders.claim_stale_pending(cutoff, 3, utcnow())
        async with OrderUnitOfWork(engine, None) as second:
            taken = await asyncio.wait_for(
                second.orders.claim_stale_pending(cutoff, 100, utcnow()), timeout=5
            )
            await second.commit()
        await first.commit()

    mine = {o.id for o in made}
    assert {o.id for o in held} | {o.id for o in taken} >= mine
    assert not {o.id for o in held} & {o.id for o in taken}
    async with OrderUnitOfWork(engine, None) as third:
        assert await third.orders.claim_stale_pending(cutoff, 100, utcnow()) == []


# -- migration orders_0002 down and up -----------------------------------------------------


async def request_id_collation(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        collation: str = await conn.scalar(
            sa.text(
                "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE"
                " TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'orders'"
                " AND COLUMN_NAME = 'request_id'"
            )
        )
    return collation


async def downgrade_to(engine: AsyncEngine, revision: str) -> None:
    """Step down (later migrations may exist) until ``revision`` is the current one."""
    for _ in range(20):
        async with engine.connect() as conn:
            current = await conn.scalar(sa.text("SELECT version_num FROM alembic_version_orders"))
        if current == revision:
            return
        await migrate.downgrade(engine, "orders", 1)
    raise AssertionError(f"{revision} not reached")


@pytest.mark.databases("mariadb")  # collations; PostgreSQL: test_postgresql.py
async def test_migration_refuses_to_downgrade_while_keys_would_merge_then_goes_down_and_up(
    engine: AsyncEngine, service: OrderService
) -> None:
    assert (await request_id_collation(engine)).endswith("_bin")
    await service.create_order(1, Decimal(10), request_id="merge-me")
    await service.create_order(1, Decimal(10), request_id="MERGE-ME")

    await downgrade_to(engine, "orders_0002")
    with pytest.raises(RuntimeError, match="differing only in case"):
        await migrate.downgrade(engine, "orders", 1)
    assert (await request_id_collation(engine)).endswith("_bin")  # nothing changed

    async with engine.begin() as conn:  # what the message asks an operator to do
        await conn.execute(
            orders.update()
            .where(orders.c.request_id.in_(["MERGE-ME", "ABC", "a-key", "pad "]))
            .values(request_id=None)
        )
    await downgrade_to(engine, "orders_0001")
    assert not (await request_id_collation(engine)).endswith("_bin")
    async with engine.connect() as conn:
        columns = await conn.run_sync(
            lambda c: [col["name"] for col in sa.inspect(c).get_columns("orders")]
        )
    assert "request_fingerprint" not in columns

    await migrate.upgrade(engine, "orders")
    assert (await request_id_collation(engine)).endswith("_bin")

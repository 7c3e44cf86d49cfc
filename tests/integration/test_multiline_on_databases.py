"""Orders of several lines on the real MariaDB and PostgreSQL (each test on an engine runs on
both; the MySQL 8 path where rows get their ids one INSERT at a time): concurrent orders
over the same products in opposite line order never deadlock unretried nor oversell and
are each decided once, all lines or none; the repositories' lines, prices, failures and
queries by product; migrations orders_0008 and products_0007 down and up with rows present,
also on SQLite, and refused, changing nothing, while a row of several lines exists."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.envelope import Event
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.orders.domain import Failure, NewOrder, Order, OrderLine, OrderStatus, ShortLine
from orderstack.orders.events import order_created_event
from orderstack.orders.repository import OrderUnitOfWork, order_lines, orders
from orderstack.products.domain import (
    Refusal,
    Refused,
    ReservationOutcome,
    StockLine,
    reservation,
)
from orderstack.products.domain import ShortLine as StockShortLine
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.repository import (
    ProductUnitOfWork,
    outbox,
    products,
    reservation_lines,
    stock_reservations,
)
from orderstack.products.service import ProductService
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow
from tests.unit.fakes import FakeDelivery

pytestmark = pytest.mark.integration

CONFIRMED, FAILED = ReservationOutcome.CONFIRMED, ReservationOutcome.FAILED
CANCELLED = ReservationOutcome.CANCELLED


def _service(engine: AsyncEngine) -> ProductService:
    return ProductService(lambda: ProductUnitOfWork(engine, None), InProcessProductCache())


def _summed(lines: list[tuple[int, int]]) -> dict[int, int]:
    units: Counter[int] = Counter()
    for product_id, quantity in lines:
        units[product_id] += quantity
    return dict(units)


# -- concurrency: pairs of orders in opposite line order --------------------------------


async def test_concurrent_pairs_in_opposite_line_order_never_deadlock_nor_oversell(
    engine: AsyncEngine,
) -> None:
    """Two hundred pairs of orders over the same four products, each pair's lines in
    opposite order (and a product twice in some), each order.created delivered to its own
    consumer in its own transaction, all at once: every delivery is acked (a deadlock or
    serialization failure retried, never dead-lettered), every order has one reservation
    and one answer, a confirmed one holds the units of all its lines at the catalog's
    prices, a failed one holds nothing, and per product the units held = opening - stock."""
    service = _service(engine)
    prices = [Decimal("1.25"), Decimal("2.50"), Decimal("0.10"), Decimal("99.99")]
    opening = [300, 260, 220, 400]
    ids = [
        (await service.create_product(f"Pair {i}", price, qty)).id
        for i, (price, qty) in enumerate(zip(prices, opening, strict=True))
    ]
    price_of = dict(zip(ids, prices, strict=True))
    rng = random.Random(8)
    lines_of: dict[int, list[tuple[int, int]]] = {}
    events: list[Event] = []
    wrong_total: set[int] = set()
    for pair in range(200):
        chosen = rng.sample(ids, rng.randint(2, 4))
        forward = [(pid, rng.randint(1, 3)) for pid in chosen]
        if pair % 5 == 0:
            forward.append((chosen[0], 1))  # a product twice: one demand, summed
        for n, lines in enumerate((forward, forward[::-1])):
            order_id = 2_000_000 + 2 * pair + n
            lines_of[order_id] = lines
            total = sum((price_of[p] * q for p, q in lines), Decimal(0))
            data: dict[str, object] = {
                "orderId": order_id,
                "items": [{"productId": p, "quantity": q} for p, q in lines],
            }
            if pair % 3 == 0:
                data["agreedTotal"] = float(total)
            if pair % 17 == 0 and n == 0:
                data["agreedTotal"] = float(total + Decimal("0.01"))
                wrong_total.add(order_id)
            events.append(Event("order.created", data))

    attempts = 0

    def uow_factory() -> ProductUnitOfWork:
        nonlocal attempts
        attempts += 1
        return ProductUnitOfWork(engine, None)

    consumer = EventConsumer(
        InProcessBus(None), PRODUCT_SERVICE_QUEUE, uow_factory, OrderStockHandler(service)
    )
    deliveries = [FakeDelivery.of(event) for event in events]
    await asyncio.wait_for(
        asyncio.gather(*(consumer.process([delivery]) for delivery in deliveries)), 120
    )

    assert Counter(d.outcome for d in deliveries) == {"ack": 400}
    assert consumer.settled[("order.created", "applied")] == 400
    assert attempts >= 400  # more when a transaction was retried (a deadlock, say)
    async with engine.connect() as conn:
        qty: dict[int, int] = dict(
            (
                await conn.execute(
                    sa.select(products.c.id, products.c.qty).where(products.c.id.in_(ids))
                )
            ).all()
        )
        outcome: dict[int, str] = dict(
            (
                await conn.execute(
                    sa.select(stock_reservations.c.order_id, stock_reservations.c.outcome).where(
                        stock_reservations.c.order_id.in_(list(lines_of))
                    )
                )
            ).all()
        )
        held_rows = (
            await conn.execute(
                sa.select(
                    reservation_lines.c.order_id,
                    reservation_lines.c.product_id,
                    reservation_lines.c.quantity,
                    reservation_lines.c.unit_price,
                ).where(reservation_lines.c.order_id.in_(list(lines_of)))
            )
        ).all()
        answers = [
            (row.event_type, json.loads(row.payload))
            for row in await conn.execute(
                sa.select(outbox.c.event_type, outbox.c.payload).where(
                    outbox.c.event_type.like("order.qty_%")
                )
            )
        ]
    assert set(outcome) == set(lines_of)  # every order decided, once (the primary key)
    held: dict[int, dict[int, int]] = {}
    for row in held_rows:
        held.setdefault(row.order_id, {})[row.product_id] = row.quantity
        assert row.unit_price == price_of[row.product_id]
    for order_id, lines in lines_of.items():
        if outcome[order_id] == "confirmed":
            assert held[order_id] == _summed(lines), order_id  # all its lines
        else:
            assert outcome[order_id] == "failed" and order_id not in held  # none
    assert all(outcome[o] == "failed" for o in wrong_total)
    answered = Counter((payload.get("data", payload)["orderId"], name) for name, payload in answers)
    assert sorted(o for o, _ in answered) == sorted(lines_of)  # one answer per order
    for (order_id, name), count in answered.items():
        assert count == 1
        assert name == f"order.qty_{outcome[order_id]}"
    for pid, start in zip(ids, opening, strict=True):
        assert qty[pid] >= 0
        taken = sum(h.get(pid, 0) for h in held.values())
        assert taken == start - qty[pid], pid
    confirmed = len([o for o in outcome.values() if o == "confirmed"])
    assert 0 < confirmed < 400  # the products ran short: some of each
    async with ProductUnitOfWork(engine, None) as uow:
        for pid, start in zip(ids, opening, strict=True):
            assert await uow.products.held_units(pid) == start - qty[pid]


# -- the order repository -----------------------------------------------------------------

_next_product = iter(range(7_000_001, 8_000_000))


def _product() -> int:
    """A product id no other test of the module orders."""
    return next(_next_product)


async def _add(
    engine: AsyncEngine, new: list[NewOrder], *, returning: bool | None = None
) -> list[Order]:
    async with OrderUnitOfWork(engine, None, insert_returning=returning) as uow:
        stored = await uow.orders.add_many(new, utcnow())
        await uow.commit()
    return stored


async def _move(engine: AsyncEngine, ids: list[int], status: OrderStatus) -> None:
    async with OrderUnitOfWork(engine, None) as uow:
        await uow.orders.move_many(ids, status, [OrderStatus.PENDING], utcnow())
        await uow.commit()


async def _get(engine: AsyncEngine, order_id: int) -> Order:
    async with OrderUnitOfWork(engine, None) as uow:
        order = await uow.orders.get(order_id)
    assert order is not None
    return order


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "mysql8-path"])
async def test_each_order_gets_its_own_lines_back(engine: AsyncEngine, returning: bool) -> None:
    """A batch mixing one-line and several-line orders: each order's lines are stored
    under the id its row got, read back in the order sent (a product twice kept twice)."""
    a, b, c = _product(), _product(), _product()
    shapes = [
        (OrderLine(a, 1),),
        (OrderLine(b, 2), OrderLine(a, 3)),
        (OrderLine(c, 1), OrderLine(a, 1), OrderLine(c, 4)),
        (OrderLine(b, 7),),
    ]
    new = [
        NewOrder(
            shapes[i % 4],
            None if i % 2 else Decimal(i),
            f"lines-{returning}-{i}",
            f"fp{i}",
            None if i % 2 else Decimal(i),
        )
        for i in range(40)
    ]
    stored = await asyncio.gather(
        *(_add(engine, new[i : i + 10], returning=returning) for i in range(0, 40, 10))
    )
    flat = [o for batch in stored for o in batch]

    assert [o.items for o in flat] == [n.items for n in new]
    for order, n in zip(flat, new, strict=True):
        again = await _get(engine, order.id)
        assert again.items == n.items
        assert (again.total_price, again.agreed_total) == (n.total_price, n.agreed_total)
        assert again.product_id == (n.items[0].product_id if len(n.items) == 1 else None)
        async with OrderUnitOfWork(engine, None) as uow:
            found = await uow.orders.by_request_id(n.request_id or "")
        assert found == (again, n.request_fingerprint)
    async with engine.connect() as conn:
        counted = await conn.scalar(
            sa.select(sa.func.count()).where(order_lines.c.order_id.in_([o.id for o in flat]))
        )
    assert counted == sum(len(n.items) for n in new if len(n.items) > 1)


async def test_find_by_product_merges_one_line_and_several_line_orders_under_a_cursor(
    engine: AsyncEngine,
) -> None:
    wanted, other = _product(), _product()
    shapes = [
        (OrderLine(wanted, 1),),
        (OrderLine(other, 1), OrderLine(wanted, 2)),
        (OrderLine(other, 1),),
        (OrderLine(wanted, 1), OrderLine(other, 1), OrderLine(wanted, 5)),  # twice: once found
        (OrderLine(other, 2), OrderLine(other, 3)),
    ]
    made = await _add(engine, [NewOrder(shapes[i % 5], Decimal(1)) for i in range(23)])
    expected = [o.id for o in made if any(li.product_id == wanted for li in o.items)]
    confirmed = [o.id for o in made[::2]]
    await _move(engine, confirmed, OrderStatus.CONFIRMED)

    for limit in (1, 2, 3, 7, 50):
        seen: list[int] = []
        after = 0
        while True:
            async with OrderUnitOfWork(engine, None) as uow:
                page = await uow.orders.find(product_id=wanted, after=after, limit=limit)
            seen += [o.id for o in page]
            if len(page) < limit:
                break
            after = page[-1].id
        assert seen == expected, limit
        for status, ids in (
            (OrderStatus.CONFIRMED, [i for i in expected if i in confirmed]),
            (OrderStatus.PENDING, [i for i in expected if i not in confirmed]),
        ):
            async with OrderUnitOfWork(engine, None) as uow:
                page = await uow.orders.find(status=status, product_id=wanted, after=0, limit=limit)
            assert [o.id for o in page] == ids[:limit]
    async with OrderUnitOfWork(engine, None) as uow:
        page = await uow.orders.find(product_id=wanted, after=0, limit=50)
    assert [o.items for o in page] == [o.items for o in made if o.id in expected]


async def test_prices_are_written_once_where_the_order_holds_them(engine: AsyncEngine) -> None:
    a, b = _product(), _product()
    lines = (OrderLine(a, 2), OrderLine(b, 1), OrderLine(a, 3))
    unpriced, totalled, one, failed, pending = await _add(
        engine,
        [
            NewOrder(lines, None),
            NewOrder(lines, Decimal(1)),
            NewOrder((OrderLine(a, 4),), None),
            NewOrder(lines, None),
            NewOrder(lines, None),
        ],
    )
    await _move(engine, [unpriced.id, totalled.id, one.id], OrderStatus.CONFIRMED)
    await _move(engine, [failed.id], OrderStatus.FAILED)
    priced = (OrderLine(a, 5, Decimal("1.10")), OrderLine(b, 1, Decimal("20.00")))
    answer: dict[int, tuple[tuple[OrderLine, ...], Decimal]] = {
        order.id: (priced, Decimal("25.50")) for order in (unpriced, totalled, failed, pending)
    }
    answer[one.id] = ((OrderLine(a, 4, Decimal("1.10")),), Decimal("4.40"))

    for again in (answer, {k: ((OrderLine(a, 5, Decimal(9)),), Decimal(9)) for k in answer}):
        async with OrderUnitOfWork(engine, None) as uow:
            await uow.orders.record_prices(again)
            await uow.commit()

        got = {o.id: await _get(engine, o.id) for o in (unpriced, totalled, one, failed, pending)}
        assert got[unpriced.id].total_price == Decimal("25.50")  # the catalog's: it had none
        assert got[totalled.id].total_price == Decimal(1)  # the client's stays
        for order_id in (unpriced.id, totalled.id):
            assert [li.unit_price for li in got[order_id].items] == [
                Decimal("1.10"),
                Decimal("20.00"),
                Decimal("1.10"),
            ]
            assert got[order_id].items[2].line_total == Decimal("3.30")
        assert got[one.id].items == (OrderLine(a, 4, Decimal("1.10")),)
        assert got[one.id].total_price == Decimal("4.40")
        for order_id in (failed.id, pending.id):  # not confirmed: nothing written
            assert got[order_id].total_price is None
            assert all(li.unit_price is None for li in got[order_id].items), order_id


async def test_prices_of_one_line_orders_touch_no_order_lines(engine: AsyncEngine) -> None:
    """A batch of one-line orders (most batches) writes their prices on the orders rows
    alone: no statement on order_lines, whose rows only orders of several lines have."""
    a = _product()
    made = await _add(engine, [NewOrder((OrderLine(a, 1 + i),), None) for i in range(5)])
    await _move(engine, [o.id for o in made], OrderStatus.CONFIRMED)
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with OrderUnitOfWork(engine, None) as uow:
            await uow.orders.record_prices(
                {
                    o.id: ((OrderLine(a, 1 + i, Decimal("2.50")),), Decimal("2.50") * (1 + i))
                    for i, o in enumerate(made)
                }
            )
            await uow.commit()
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", seen)
    assert statements and not [s for s in statements if "order_lines" in s]
    for i, order in enumerate(made):
        got = await _get(engine, order.id)
        assert got.items == (OrderLine(a, 1 + i, Decimal("2.50")),)
        assert got.total_price == Decimal("2.50") * (1 + i)


async def test_failures_are_written_on_failed_orders_once(engine: AsyncEngine) -> None:
    a, b = _product(), _product()
    lines = (OrderLine(a, 2), OrderLine(b, 1))
    failed, confirmed, pending = await _add(engine, [NewOrder(lines, None) for _ in range(3)])
    await _move(engine, [failed.id], OrderStatus.FAILED)
    await _move(engine, [confirmed.id], OrderStatus.CONFIRMED)
    why = Failure(
        "product_not_found_or_unavailable", (ShortLine(a, 2, 1), ShortLine(b, 1, 0)), Decimal("3.5")
    )
    other = Failure("price_changed", (), Decimal(7))

    for failure in (why, other):
        async with OrderUnitOfWork(engine, None) as uow:
            await uow.orders.record_failures({o.id: failure for o in (failed, confirmed, pending)})
            await uow.commit()

    assert (await _get(engine, failed.id)).failure == why
    assert (await _get(engine, confirmed.id)).failure is None
    assert (await _get(engine, pending.id)).failure is None


# -- the product repository ---------------------------------------------------------------


async def test_reservations_keep_their_lines_and_held_units_count_them(
    engine: AsyncEngine,
) -> None:
    service = _service(engine)
    a = (await service.create_product("Held A", Decimal(1), 0)).id
    b = (await service.create_product("Held B", Decimal(1), 0)).id
    now = utcnow()
    refusal = Refusal(Refused.UNAVAILABLE, (StockShortLine(b, 9, 0),), Decimal("12.00"))
    made = [
        reservation(
            3_000_001, [StockLine(a, 2, Decimal("1.50")), StockLine(b, 1, Decimal(4))], CONFIRMED
        ),
        reservation(3_000_002, [StockLine(a, 5, Decimal("1.50"))], CONFIRMED),
        reservation(3_000_003, [StockLine(a, 1), StockLine(b, 9)], FAILED, refusal),
        reservation(
            3_000_004,
            [
                StockLine(b, 2, Decimal(4)),
                StockLine(a, 1, Decimal("1.50")),
                StockLine(b, 1, Decimal(4)),
            ],
            CONFIRMED,
        ),
        reservation(
            3_000_005, [StockLine(a, 3, Decimal("1.50")), StockLine(b, 3, Decimal(4))], CONFIRMED
        ),
    ]
    async with ProductUnitOfWork(engine, None) as uow:
        await uow.products.record_reservations(made, now)
        await uow.commit()
    async with ProductUnitOfWork(engine, None) as uow:
        assert await uow.products.mark_cancelled([3_000_005], now) == 1
        await uow.commit()

    async with ProductUnitOfWork(engine, None) as uow:
        known = await uow.products.reservations_of([r.order_id for r in made] + [3_000_999])
        held = (await uow.products.held_units(a), await uow.products.held_units(b))
    assert set(known) == {r.order_id for r in made}
    for r in (made[0], made[1], made[3]):
        assert known[r.order_id] == r
    # A failed reservation of several lines keeps no lines (it holds none): its refusal.
    assert (known[3_000_003].outcome, known[3_000_003].quantity) == (FAILED, 10)
    assert known[3_000_004].lines == (StockLine(a, 1, Decimal("1.50")), StockLine(b, 3, Decimal(4)))
    assert known[3_000_004].total == Decimal("13.50")
    assert known[3_000_003].refusal == refusal and known[3_000_003].held == {}
    assert known[3_000_005].outcome is CANCELLED and known[3_000_005].held == {}
    assert held == (2 + 5 + 1, 1 + 3)  # the cancelled one's lines hold nothing
    async with engine.connect() as conn:
        stored: dict[int, int | None] = dict(
            (
                await conn.execute(
                    sa.select(stock_reservations.c.order_id, stock_reservations.c.product_id).where(
                        stock_reservations.c.order_id.in_([r.order_id for r in made])
                    )
                )
            ).all()
        )
    assert stored == {
        3_000_001: None,
        3_000_002: a,
        3_000_003: None,
        3_000_004: None,
        3_000_005: None,
    }


async def test_a_confirmed_multi_line_order_cancelled_twice_gives_back_every_line_once(
    engine: AsyncEngine,
) -> None:
    service = _service(engine)
    a = (await service.create_product("Back A", Decimal(1), 5)).id
    b = (await service.create_product("Back B", Decimal(2), 5)).id
    lines = [
        {"productId": b, "quantity": 2},
        {"productId": a, "quantity": 3},
        {"productId": b, "quantity": 1},
    ]
    consumer = EventConsumer(
        InProcessBus(None),
        PRODUCT_SERVICE_QUEUE,
        lambda: ProductUnitOfWork(engine, None),
        OrderStockHandler(service),
    )
    created = Event("order.created", {"orderId": 3_100_001, "items": lines})
    await consumer.process([FakeDelivery.of(created)])
    assert [(await service.get_product(p)).qty for p in (a, b)] == [2, 2]

    cancels = [Event("order.cancelled", {"orderId": 3_100_001, "items": lines}) for _ in range(3)]
    await asyncio.gather(*(consumer.process([FakeDelivery.of(c)]) for c in cancels))

    assert [(await service.get_product(p)).qty for p in (a, b)] == [5, 5]
    async with ProductUnitOfWork(engine, None) as uow:
        assert (await uow.products.held_units(a), await uow.products.held_units(b)) == (0, 0)


# -- migrations ---------------------------------------------------------------------------


async def _revision(engine: AsyncEngine, service: str) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(sa.text(f"SELECT version_num FROM alembic_version_{service}"))  # noqa: S608


async def _down_to(engine: AsyncEngine, revision: str) -> None:
    """Step the orders' migrations down (later ones may exist) until ``revision``."""
    for _ in range(20):
        if await _revision(engine, "orders") == revision:
            return
        await migrate.downgrade(engine, "orders", 1)
    raise AssertionError(f"{revision} not reached")


async def _tables_and_columns(engine: AsyncEngine) -> dict[str, set[str]]:
    def read(conn: sa.Connection) -> dict[str, set[str]]:
        inspector = sa.inspect(conn)
        return {
            table: {str(c["name"]) for c in inspector.get_columns(table)}
            for table in inspector.get_table_names()
        }

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def _clear(engine: AsyncEngine) -> None:
    """Start from tables without rows of several lines (other tests of the module wrote
    some): a downgrade is refused while one exists."""
    async with engine.begin() as conn:
        for table in (order_lines, orders, reservation_lines, stock_reservations):
            await conn.execute(table.delete())


async def orders_down_and_up(engine: AsyncEngine) -> None:
    await _clear(engine)
    kept = await _add(
        engine,
        [
            NewOrder((OrderLine(5, 2),), Decimal("9.90"), "kept-1", "fp-1", Decimal("9.90")),
            NewOrder((OrderLine(6, 1),), Decimal(3)),
        ],
    )
    await _move(engine, [kept[0].id], OrderStatus.CONFIRMED)
    before = [await _get(engine, o.id) for o in kept]

    await _down_to(engine, "orders_0007")  # the later ones first, then orders_0008
    assert await _revision(engine, "orders") == "orders_0007"
    schema = await _tables_and_columns(engine)
    assert "order_lines" not in schema
    assert not {"unit_price", "agreed_total", "failure"} & schema["orders"]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text(
                    "SELECT id, product_id, quantity, total_price, status FROM orders ORDER BY id"
                )
            )
        ).all()
    assert [(r.id, r.product_id, r.quantity, Decimal(r.total_price), r.status) for r in rows] == [
        (o.id, o.product_id, o.quantity, o.total_price, o.status.value) for o in before
    ]

    await migrate.upgrade(engine, "orders")
    after = [await _get(engine, o.id) for o in kept]
    assert [(o.items, o.total_price, o.status) for o in after] == [
        (o.items, o.total_price, o.status) for o in before
    ]
    assert after[0].agreed_total is None  # a column the schema before did not have

    # Refused, nothing changed: an order of several lines, then an order without a total.
    for blocking in (
        NewOrder((OrderLine(5, 1), OrderLine(6, 1)), Decimal(4)),
        NewOrder((OrderLine(5, 1),), None),
    ):
        [order] = await _add(engine, [blocking])
        await _down_to(engine, "orders_0008")  # the later ones (owners, ...) first
        schema = await _tables_and_columns(engine)
        with pytest.raises(Exception, match="downgrade refused"):
            await migrate.downgrade(engine, "orders", 1)
        assert await _revision(engine, "orders") == "orders_0008"
        assert await _tables_and_columns(engine) == schema
        await migrate.upgrade(engine, "orders")
        assert (await _get(engine, order.id)).items == blocking.items
        async with engine.begin() as conn:
            await conn.execute(order_lines.delete().where(order_lines.c.order_id == order.id))
            await conn.execute(orders.delete().where(orders.c.id == order.id))


async def products_down_and_up(engine: AsyncEngine) -> None:
    await _clear(engine)
    service = _service(engine)
    a = (await service.create_product("Mig A", Decimal(2), 10)).id
    b = (await service.create_product("Mig B", Decimal(3), 10)).id
    now = utcnow()
    refusal = Refusal(Refused.UNAVAILABLE, (StockShortLine(a, 20, 10),), Decimal(40))
    async with ProductUnitOfWork(engine, None) as uow:
        await uow.products.record_reservations(
            [
                reservation(4_000_001, [StockLine(a, 3, Decimal(2))], CONFIRMED),
                reservation(4_000_002, [StockLine(b, 2, Decimal(3))], CONFIRMED),
                reservation(4_000_003, [StockLine(a, 20)], FAILED, refusal),
                reservation(4_000_004, [StockLine(b, 1, Decimal(3))], CONFIRMED),
            ],
            now,
        )
        await uow.products.mark_cancelled([4_000_004], now)
        await uow.commit()

    await migrate.downgrade(engine, "products", 1)
    assert await _revision(engine, "products") == "products_0006"
    schema = await _tables_and_columns(engine)
    assert "reservation_lines" not in schema and "refusal" not in schema["stock_reservations"]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text(
                    "SELECT order_id, product_id, quantity, outcome FROM stock_reservations"
                    " ORDER BY order_id"
                )
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (4_000_001, a, 3, "confirmed"),
        (4_000_002, b, 2, "confirmed"),
        (4_000_003, a, 20, "failed"),
        (4_000_004, b, 1, "cancelled"),
    ]

    await migrate.upgrade(engine, "products")
    async with ProductUnitOfWork(engine, None) as uow:
        known = await uow.products.reservations_of([4_000_001, 4_000_002, 4_000_003, 4_000_004])
        held = (await uow.products.held_units(a), await uow.products.held_units(b))
    assert held == (3, 2)  # the confirmed ones' lines, back from their rows
    assert known[4_000_001].lines == (StockLine(a, 3),)  # unpriced: lines from before
    assert known[4_000_003].outcome is FAILED and known[4_000_003].held == {}
    assert known[4_000_004].outcome is CANCELLED and known[4_000_004].held == {}

    async with ProductUnitOfWork(engine, None) as uow:
        await uow.products.record_reservations(
            [reservation(4_000_005, [StockLine(a, 1), StockLine(b, 1)], FAILED)], now
        )
        await uow.commit()
    schema = await _tables_and_columns(engine)
    with pytest.raises(Exception, match="downgrade refused"):
        await migrate.downgrade(engine, "products", 1)
    assert await _revision(engine, "products") == "products_0007"
    assert await _tables_and_columns(engine) == schema
    async with ProductUnitOfWork(engine, None) as uow:
        assert 4_000_005 in await uow.products.reservations_of([4_000_005])
        assert (await uow.products.held_units(a), await uow.products.held_units(b)) == (3, 2)


async def test_orders_0008_goes_down_and_up_keeping_one_line_orders(engine: AsyncEngine) -> None:
    await orders_down_and_up(engine)


async def test_products_0007_goes_down_and_up_keeping_reservations(engine: AsyncEngine) -> None:
    await products_down_and_up(engine)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'lines.db'}"))
    for service in ("orders", "products"):
        await migrate.upgrade(engine, service)  # type: ignore[arg-type]
    yield engine
    await engine.dispose()


async def test_orders_0008_goes_down_and_up_on_sqlite(sqlite: AsyncEngine) -> None:
    await orders_down_and_up(sqlite)


async def test_products_0007_goes_down_and_up_on_sqlite(sqlite: AsyncEngine) -> None:
    await products_down_and_up(sqlite)


async def test_the_sweeper_resends_a_multi_line_order_with_its_lines(engine: AsyncEngine) -> None:
    """A stale pending order of several lines is claimed with its lines and its agreed
    total, so the order.created sent again asks for the same thing."""
    a, b = _product(), _product()
    lines = (OrderLine(a, 2), OrderLine(b, 1), OrderLine(a, 1))
    old = utcnow() - timedelta(hours=2)
    async with OrderUnitOfWork(engine, None) as uow:
        [order] = await uow.orders.add_many(
            [NewOrder(lines, Decimal(8), None, None, Decimal(8))], old
        )
        await uow.commit()
    async with OrderUnitOfWork(engine, None) as uow:
        claimed = await uow.orders.claim_stale_pending(
            utcnow() - timedelta(hours=1), 1000, utcnow()
        )
        await uow.commit()

    [again] = [o for o in claimed if o.id == order.id]
    assert (again.items, again.agreed_total, again.total_price) == (lines, Decimal(8), Decimal(8))
    event = order_created_event(again)
    assert event.data["items"] == [
        {"productId": a, "quantity": 2},
        {"productId": b, "quantity": 1},
        {"productId": a, "quantity": 1},
    ]
    assert event.data["agreedTotal"] == 8 and "productId" not in event.data


async def test_a_multi_line_order_cancelled_before_its_creation_takes_nothing(
    engine: AsyncEngine,
) -> None:
    service = _service(engine)
    a = (await service.create_product("Early A", Decimal(1), 4)).id
    b = (await service.create_product("Early B", Decimal(2), 4)).id
    lines = [{"productId": a, "quantity": 1}, {"productId": b, "quantity": 2}]
    consumer = EventConsumer(
        InProcessBus(None),
        PRODUCT_SERVICE_QUEUE,
        lambda: ProductUnitOfWork(engine, None),
        OrderStockHandler(service),
    )
    cancelled = Event("order.cancelled", {"orderId": 3_200_001, "items": lines})
    created = Event("order.created", {"orderId": 3_200_001, "items": lines, "agreedTotal": 5})
    resent = Event("order.created", dict(created.data))  # the sweeper's, a new event id
    for event in (cancelled, created, resent):
        delivery = FakeDelivery.of(event)
        await consumer.process([delivery])
        assert delivery.outcome == "ack"

    assert [(await service.get_product(p)).qty for p in (a, b)] == [4, 4]
    async with engine.connect() as conn:
        answers = [
            json.loads(p)
            for p in await conn.scalars(
                sa.select(outbox.c.payload).where(outbox.c.event_type == "order.qty_failed")
            )
        ]
        held = await conn.scalar(
            sa.select(sa.func.count()).where(reservation_lines.c.order_id == 3_200_001)
        )
    mine = [p.get("data", p) for p in answers if p.get("data", p)["orderId"] == 3_200_001]
    assert [m["reason"] for m in mine] == ["cancelled", "cancelled"]
    assert held == 0


async def test_concurrent_creations_cancels_and_restocks_keep_the_ledger(
    engine: AsyncEngine,
) -> None:
    """Sixty orders of several lines, each created, cancelled twice and some restocks, all
    at once in separate transactions: every order ends cancelled, each line given back
    once (stock = opening + restocks), nothing held, no delivery dead-lettered."""
    service = _service(engine)
    ids = [(await service.create_product(f"Churn {i}", Decimal(1), 20)).id for i in range(3)]
    rng = random.Random(11)
    consumer = EventConsumer(
        InProcessBus(None),
        PRODUCT_SERVICE_QUEUE,
        lambda: ProductUnitOfWork(engine, None),
        OrderStockHandler(service),
    )
    events: list[Event] = []
    for n in range(60):
        chosen = rng.sample(ids, rng.randint(1, 3))
        items = [{"productId": p, "quantity": rng.randint(1, 3)} for p in chosen]
        data = {"orderId": 3_300_000 + n, "items": items}
        events += [
            Event("order.created", data),
            Event("order.cancelled", data),
            Event("order.cancelled", dict(data)),
        ]
    rng.shuffle(events)
    deliveries = [FakeDelivery.of(e) for e in events]
    restocks = [(rng.choice(ids), rng.randint(1, 4)) for _ in range(12)]

    await asyncio.wait_for(
        asyncio.gather(
            *(consumer.process([d]) for d in deliveries),
            *(service.adjust_stock(p, units, "restock") for p, units in restocks),
        ),
        120,
    )

    assert Counter(d.outcome for d in deliveries) == {"ack": len(deliveries)}
    for pid in ids:
        restocked = sum(units for p, units in restocks if p == pid)
        assert (await service.get_product(pid)).qty == 20 + restocked
    async with ProductUnitOfWork(engine, None) as uow:
        assert [await uow.products.held_units(p) for p in ids] == [0, 0, 0]
        known = await uow.products.reservations_of([3_300_000 + n for n in range(60)])
    assert {r.outcome for r in known.values()} == {CANCELLED} and len(known) == 60

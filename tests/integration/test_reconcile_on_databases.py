"""`orderstack reconcile` on MariaDB, PostgreSQL and SQLite (each test on all three): a ledger
written by the services' own code is clean (exit 0); drift injected into the tables (a
product's qty changed, a reservation line deleted, a reservation of no order, orders stuck
or settled apart) is found and named (exit 1); ``--fix`` removes the stock drift with a
``reconcile`` ledger entry, the stock kept, the version bumped, and the next run is clean
on the product side; cross-service findings stay reported. Without the order tables, the
product side alone is checked."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.sandbox import Sandbox
from orderstack import cli, reconcile
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.orders.domain import NewOrder, OrderLine, OrderStatus
from orderstack.orders.repository import OrderUnitOfWork, order_lines, orders
from orderstack.products.domain import CancelReservation, ReserveStock, StockLine
from orderstack.products.drift import read_drift
from orderstack.products.repository import (
    ProductUnitOfWork,
    products,
    reservation_lines,
    stock_adjustments,
    stock_reservations,
)
from orderstack.products.service import ProductService
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow

pytestmark = pytest.mark.integration

TABLES = (order_lines, orders, reservation_lines, stock_reservations, stock_adjustments, products)


@pytest.fixture(autouse=True)
def _logging_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main configures structlog for the process: on captured output, later tests
    would log to a closed file."""
    monkeypatch.setattr(cli, "configure_logging", lambda *_args: None)


@dataclass
class Db:
    engine: AsyncEngine
    url: str  # DATABASE_URL, as an operator gives it


@pytest.fixture(scope="module")
def server_sandbox(make_sandbox: Callable[..., Sandbox]) -> Callable[[str], tuple[Sandbox, bool]]:
    """One sandbox per server for the module: (sandbox, whether it was just created)."""
    made: dict[str, Sandbox] = {}

    def get(name: str) -> tuple[Sandbox, bool]:
        fresh = name not in made
        if fresh:
            made[name] = make_sandbox("rc", name)
        return made[name], fresh

    return get


@pytest.fixture(params=["mariadb", "postgresql", "sqlite"])
def target(
    request: pytest.FixtureRequest,
    server_sandbox: Callable[[str], tuple[Sandbox, bool]],
    tmp_path: Path,
) -> tuple[str, URL, bool]:
    """(DATABASE_URL, the engine's URL, whether it is new): a sandbox's database, or a new
    SQLite file (created here, outside the test's event loop)."""
    if request.param == "sqlite":
        path = tmp_path / "reconcile.db"
        return f"sqlite:///{path}", make_url(f"sqlite+aiosqlite:///{path}"), True
    sandbox, fresh = server_sandbox(request.param)
    return sandbox.database_url, sandbox.engine_url, fresh


@pytest.fixture
async def db(target: tuple[str, URL, bool]) -> AsyncIterator[Db]:
    """Both services' tables at head, empty."""
    url, engine_url, fresh = target
    engine = create_engine(engine_url, pool_size=5)
    if fresh:
        for service in ("orders", "products"):
            await migrate.upgrade(engine, service)
    async with engine.begin() as conn:
        for table in TABLES:
            await conn.execute(table.delete())
    yield Db(engine, url)
    await engine.dispose()


async def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, *args: str
) -> tuple[int, str]:
    """``orderstack reconcile ARGS`` as the command line runs it: (exit status, stdout)."""
    monkeypatch.setenv("DATABASE_URL", url)
    capsys.readouterr()
    status = await asyncio.to_thread(cli.main, ["reconcile", *args])
    out = capsys.readouterr().out
    return status, out


@dataclass
class Shop:
    products: list[int]
    confirmed_one: int  # one line: 2 of products[0]
    confirmed_several: int  # products[0] x1 + products[1] x2 + products[0] x1
    cancelled: int
    failed: int


async def _shop(engine: AsyncEngine) -> Shop:
    """Products and orders written by the services' own code, as the events would: every
    order is settled alike on both sides."""
    service = ProductService(lambda: ProductUnitOfWork(engine, None), InProcessProductCache())
    ids = [
        (await service.create_product(f"R{i}", Decimal("2.50"), qty)).id
        for i, qty in enumerate((10, 5, 1))
    ]
    await service.adjust_stock(ids[1], 4, "restock")
    asks = [
        (OrderLine(ids[0], 2),),
        (OrderLine(ids[0], 1), OrderLine(ids[1], 2), OrderLine(ids[0], 1)),
        (OrderLine(ids[1], 3),),
        (OrderLine(ids[2], 5),),  # more than its stock: fails
    ]
    now = utcnow()
    async with OrderUnitOfWork(engine, None) as uow:
        placed = await uow.orders.add_many([NewOrder(items, None) for items in asks], now)
        await uow.commit()
    order_ids = [o.id for o in placed]
    async with ProductUnitOfWork(engine, None) as puow:
        await service.apply_order_events(
            puow,
            [
                ReserveStock(o, lines=tuple(StockLine(i.product_id, i.quantity) for i in items))
                for o, items in zip(order_ids, asks, strict=True)
            ],
        )
        await puow.commit()
    async with ProductUnitOfWork(engine, None) as puow:
        await service.apply_order_events(
            puow, [CancelReservation(order_ids[2], lines=(StockLine(ids[1], 3),))]
        )
        await puow.commit()
    async with OrderUnitOfWork(engine, None) as uow:
        pending = {OrderStatus.PENDING}
        await uow.orders.move_many(order_ids[:3], OrderStatus.CONFIRMED, pending, now)
        await uow.orders.move_many([order_ids[3]], OrderStatus.FAILED, pending, now)
        confirmed = {OrderStatus.CONFIRMED}
        await uow.orders.move_many([order_ids[2]], OrderStatus.CANCELLED, confirmed, now)
        await uow.commit()
    return Shop(ids, order_ids[0], order_ids[1], order_ids[2], order_ids[3])


async def _execute(engine: AsyncEngine, *statements: Any) -> None:
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(statement)


async def _product(engine: AsyncEngine, product_id: int) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(products.c.qty, products.c.version, products.c.updated_at).where(
                    products.c.id == product_id
                )
            )
        ).one()


async def _entries(engine: AsyncEngine, reason: str) -> list[tuple[int, int, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                stock_adjustments.c.product_id,
                stock_adjustments.c.delta,
                stock_adjustments.c.qty_after,
            )
            .where(stock_adjustments.c.reason == reason)
            .order_by(stock_adjustments.c.id)
        )
        return [(int(p), int(d), int(q)) for p, d, q in rows]


async def test_a_ledger_the_services_wrote_is_clean(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = await _shop(db.engine)
    assert (await _product(db.engine, shop.products[0])).qty == 10 - 2 - 2
    report = await reconcile.reconcile(db.engine, pending_older_than=60)
    assert report.clean, report
    assert (report.products_checked, report.orders_checked) == (3, 4)
    status, out = await _cli(monkeypatch, capsys, db.url)
    assert status == 0, out
    assert "checked 3 products, 4 orders" in out and out.rstrip().endswith("clean")
    status, out = await _cli(monkeypatch, capsys, db.url, "--json")
    assert status == 0 and orjson.loads(out)["clean"] is True


async def test_a_changed_qty_is_found_and_fixed_by_a_reconcile_entry(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = await _shop(db.engine)
    target = shop.products[1]
    await _execute(
        db.engine, products.update().where(products.c.id == target).values(qty=products.c.qty + 3)
    )
    before = await _product(db.engine, target)
    status, out = await _cli(monkeypatch, capsys, db.url)
    assert status == 1, out
    assert f"stock_drift\tproduct {target}\t" in out and "drift +3 units" in out
    assert await _entries(db.engine, "reconcile") == []  # a check writes nothing

    status, out = await _cli(monkeypatch, capsys, db.url, "--fix", "--json")
    assert status == 1, out  # drift was found (and fixed)
    body = orjson.loads(out)
    assert body["counts"]["stock_drift"] == 1
    assert body["stock"] == [
        {
            "product_id": target,
            "qty": before.qty,
            "ledger": 5 + 4,
            "held": 2,
            "deleted": False,
            "expected": 7,
            "drift_units": 3,
        }
    ]
    assert [(f["product_id"], f["delta"]) for f in body["fixed"]] == [(target, 3)]
    assert await _entries(db.engine, "reconcile") == [(target, 3, before.qty)]
    after = await _product(db.engine, target)
    assert after.qty == before.qty  # the stock is never overwritten
    assert after.version == before.version + 1 and after.updated_at >= before.updated_at

    status, out = await _cli(monkeypatch, capsys, db.url)
    assert status == 0, out


async def test_a_deleted_reservation_line_is_found_and_the_stock_side_fixed(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = await _shop(db.engine)
    target = shop.products[1]  # the multi-line order holds 2 of it
    await _execute(
        db.engine,
        reservation_lines.delete().where(
            reservation_lines.c.order_id == shop.confirmed_several,
            reservation_lines.c.product_id == target,
        ),
    )
    status, out = await _cli(monkeypatch, capsys, db.url)
    assert status == 1, out
    assert f"stock_drift\tproduct {target}\t" in out and "drift -2 units" in out
    assert f"lines_differ\torder {shop.confirmed_several}\t" in out

    status, out = await _cli(monkeypatch, capsys, db.url, "--fix")
    assert status == 1 and f"fixed product {target}: ledger entry -2" in out, out
    assert await _entries(db.engine, "reconcile") == [
        (target, -2, (await _product(db.engine, target)).qty)
    ]
    report = await reconcile.reconcile(db.engine, pending_older_than=60)
    assert report.counts[reconcile.STOCK_DRIFT] == 0 and not report.ledgers
    assert report.counts[reconcile.LINES_DIFFER] == 1  # cross-service: reported, not fixed


async def test_an_orphan_reservation_is_found(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = await _shop(db.engine)
    orphan, target = 987_654_321, shop.products[0]
    await _execute(
        db.engine,
        stock_reservations.insert().values(
            order_id=orphan, product_id=target, outcome="confirmed", quantity=1, created_at=utcnow()
        ),
        reservation_lines.insert().values(order_id=orphan, product_id=target, quantity=1),
    )
    status, out = await _cli(monkeypatch, capsys, db.url, "--fix")
    assert status == 1, out
    assert f"orphan_reservation\torder {orphan}\t" in out
    assert f"stock_drift\tproduct {target}\t" in out and "drift +1 units" in out
    assert await _entries(db.engine, "reconcile") == [(target, 1, 6)]
    status, out = await _cli(monkeypatch, capsys, db.url, "--json")
    body = orjson.loads(out)
    assert status == 1 and body["counts"]["stock_drift"] == 0
    assert body["counts"]["orphan_reservation"] == 1


async def test_orders_stuck_or_settled_apart_are_found(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = await _shop(db.engine)
    now = utcnow()
    async with OrderUnitOfWork(db.engine, None) as uow:
        stuck, fresh = await uow.orders.add_many(
            [NewOrder((OrderLine(shop.products[0], 1),), None)] * 2, now
        )
        await uow.commit()
    long_ago = now - timedelta(hours=2)
    await _execute(
        db.engine,
        orders.update().where(orders.c.id == stuck.id).values(created_at=long_ago),
        # The product side cancelled, the order side did not.
        orders.update().where(orders.c.id == shop.cancelled).values(status="confirmed"),
        # The order side failed it, the product side holds its units.
        orders.update().where(orders.c.id == shop.confirmed_one).values(status="failed"),
    )
    status, out = await _cli(monkeypatch, capsys, db.url)
    assert status == 1, out
    assert f"stuck_pending\torder {stuck.id}\t" in out and f"order {fresh.id}\t" not in out
    assert f"reservation_cancelled_order_not\torder {shop.cancelled}\t" in out
    assert f"failed_order_holding_stock\torder {shop.confirmed_one}\t" in out
    assert "stock_drift" not in out  # the product side is as its ledger says
    status, out = await _cli(monkeypatch, capsys, db.url, "--pending-older-than", "86400")
    assert "stuck_pending" not in out

    # An order cancelled long ago whose reservation still holds its units.
    await _execute(
        db.engine,
        orders.update()
        .where(orders.c.id == shop.confirmed_several)
        .values(status="cancelled", updated_at=long_ago),
    )
    report = await reconcile.reconcile(db.engine, pending_older_than=3600)
    found = {(f.kind, f.names) for f in report.examples}
    assert (
        reconcile.ORDER_CANCELLED_RESERVATION_NOT,
        f"order {shop.confirmed_several}",
    ) in found
    # Within the window, it may still be settling: not a finding yet.
    report = await reconcile.reconcile(db.engine, pending_older_than=3 * 3600)
    assert report.counts[reconcile.ORDER_CANCELLED_RESERVATION_NOT] == 0


async def test_a_confirmed_order_without_a_reservation_is_found(db: Db) -> None:
    shop = await _shop(db.engine)
    await _execute(
        db.engine,
        reservation_lines.delete().where(reservation_lines.c.order_id == shop.confirmed_one),
        stock_reservations.delete().where(stock_reservations.c.order_id == shop.confirmed_one),
    )
    report = await reconcile.reconcile(db.engine, pending_older_than=60, fix=True)
    kinds = {f.kind: f.names for f in report.examples}
    assert kinds[reconcile.CONFIRMED_WITHOUT_RESERVATION] == f"order {shop.confirmed_one}"
    assert [(f.product_id, f.delta) for f in report.fixed] == [(shop.products[0], -2)]
    again = await reconcile.reconcile(db.engine, pending_older_than=60)
    assert again.counts[reconcile.STOCK_DRIFT] == 0
    assert again.counts[reconcile.CONFIRMED_WITHOUT_RESERVATION] == 1


async def test_without_the_order_tables_the_product_side_alone_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A product service's own database (no ``orders``): its ledger is proved, and it says
    so."""
    path = tmp_path / "products.db"
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{path}"))
    try:
        await migrate.upgrade(engine, "products")
        service = ProductService(lambda: ProductUnitOfWork(engine, None), InProcessProductCache())
        product = await service.create_product("Alone", Decimal(1), 3)
        url = f"sqlite:///{path}"
        status, out = await _cli(monkeypatch, capsys, url)
        assert status == 0, out
        assert "checked 1 products, order tables absent: product side only" in out
        await _execute(engine, products.update().values(qty=1))
        status, out = await _cli(monkeypatch, capsys, url, "--fix")
        assert status == 1 and f"stock_drift\tproduct {product.id}\t" in out, out
        assert (await _cli(monkeypatch, capsys, url))[0] == 0
    finally:
        await engine.dispose()


async def test_a_one_line_order_held_otherwise_is_found(db: Db) -> None:
    """A one-line order's reservation holding other units, or another product besides."""
    shop = await _shop(db.engine)
    await _execute(
        db.engine,
        reservation_lines.update()
        .where(reservation_lines.c.order_id == shop.confirmed_one)
        .values(quantity=3),
    )
    report = await reconcile.reconcile(db.engine, pending_older_than=60)
    assert {(f.kind, f.names) for f in report.examples} >= {
        (reconcile.LINES_DIFFER, f"order {shop.confirmed_one}"),
        (reconcile.STOCK_DRIFT, f"product {shop.products[0]}"),
    }
    await _execute(
        db.engine,
        reservation_lines.update()
        .where(reservation_lines.c.order_id == shop.confirmed_one)
        .values(quantity=2),
        reservation_lines.insert().values(
            order_id=shop.confirmed_one, product_id=shop.products[2], quantity=1
        ),
    )
    report = await reconcile.reconcile(db.engine, pending_older_than=60)
    differ = [f for f in report.examples if f.kind == reconcile.LINES_DIFFER]
    assert [f.id for f in differ] == [shop.confirmed_one]
    assert differ[0].detail == (
        f"ordered {{product {shop.products[0]}: 2}}, "
        f"reserved {{product {shop.products[0]}: 2, product {shop.products[2]}: 1}}"
    )


async def test_holds_count_as_held_and_expired_ones_as_given_back(
    db: Db, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reserved order (a hold) holds its units as a confirmed one does; an expired one gave
    them back as a cancelled one did: both clean. A hold whose reservation went is found
    (``confirmed_without_reservation``, naming it reserved) with the stock it no longer
    explains, fixed by an entry; an expired order whose reservation still holds is found."""
    shop = await _shop(db.engine)
    target = shop.products[0]
    service = ProductService(lambda: ProductUnitOfWork(db.engine, None), InProcessProductCache())
    now = utcnow()
    async with OrderUnitOfWork(db.engine, None) as uow:
        held, lapsed = await uow.orders.add_many(
            [NewOrder((OrderLine(target, 1),), None, hold_seconds=60)] * 2, now
        )
        await uow.commit()
    async with ProductUnitOfWork(db.engine, None) as puow:
        await service.apply_order_events(
            puow, [ReserveStock(o.id, lines=(StockLine(target, 1),)) for o in (held, lapsed)]
        )
        await puow.commit()
    async with ProductUnitOfWork(db.engine, None) as puow:  # order.expired gives back
        await service.apply_order_events(
            puow, [CancelReservation(lapsed.id, lines=(StockLine(target, 1),))]
        )
        await puow.commit()
    async with OrderUnitOfWork(db.engine, None) as uow:
        ids = [held.id, lapsed.id]
        until = now + timedelta(seconds=60)
        await uow.orders.move_many(
            ids, OrderStatus.RESERVED, {OrderStatus.PENDING}, now, expires_at=until
        )
        await uow.orders.move_many([lapsed.id], OrderStatus.EXPIRED, {OrderStatus.RESERVED}, now)
        await uow.commit()
    assert (await _product(db.engine, target)).qty == 10 - 2 - 2 - 1
    report = await reconcile.reconcile(db.engine, pending_older_than=60)
    assert report.clean, report

    await _execute(
        db.engine,
        reservation_lines.delete().where(reservation_lines.c.order_id == held.id),
        stock_reservations.delete().where(stock_reservations.c.order_id == held.id),
        # The product side gave the expired order's units back, then "took" them again.
        stock_reservations.update()
        .where(stock_reservations.c.order_id == lapsed.id)
        .values(outcome="confirmed", cancelled_at=None),
        orders.update().where(orders.c.id == lapsed.id).values(updated_at=now - timedelta(hours=2)),
    )
    status, out = await _cli(monkeypatch, capsys, db.url, "--fix", "--pending-older-than", "60")
    assert status == 1, out
    assert f"confirmed_without_reservation\torder {held.id}\torder reserved, reservation none" in (
        out
    )
    assert (
        f"order_cancelled_reservation_not\torder {lapsed.id}\torder expired, reservation confirmed"
        in out
    )
    # One unit no longer held by the hold, one held again by the expired order: no drift
    # in all for the product, so no entry; the findings stay reported.
    assert "stock_drift" not in out and await _entries(db.engine, "reconcile") == []

    await _execute(
        db.engine,
        stock_reservations.update()
        .where(stock_reservations.c.order_id == lapsed.id)
        .values(outcome="cancelled", cancelled_at=now),
    )
    status, out = await _cli(monkeypatch, capsys, db.url, "--fix")
    assert status == 1 and f"fixed product {target}: ledger entry -1" in out, out
    again = await reconcile.reconcile(db.engine, pending_older_than=60)
    assert again.counts[reconcile.STOCK_DRIFT] == 0
    assert again.counts[reconcile.CONFIRMED_WITHOUT_RESERVATION] == 1  # reported, not fixed


async def test_the_drift_gauge_measures_what_reconcile_finds(db: Db) -> None:
    """One round of ``stock_drift_units`` (products/drift.py) on each database: 0 on what
    the services wrote (holds' lines held), the units of the drift injected (both signs
    summed as absolute), 0 again after ``--fix``."""
    shop = await _shop(db.engine)
    async with db.engine.connect() as conn:
        clean = await read_drift(conn, 0.0)
    assert (clean.drift_units, clean.drifted, clean.negative) == (0, 0, 0)
    await _execute(
        db.engine,
        products.update().where(products.c.id == shop.products[1]).values(qty=products.c.qty + 3),
        reservation_lines.delete().where(reservation_lines.c.order_id == shop.confirmed_one),
    )
    async with db.engine.connect() as conn:
        drifted = await read_drift(conn, 0.0)
    # +3 on products[1]; products[0] no longer holds the 2 units of confirmed_one: -2.
    assert (drifted.drift_units, drifted.drifted) == (5, 2)
    await reconcile.reconcile(db.engine, pending_older_than=60, fix=True)
    async with db.engine.connect() as conn:
        assert (await read_drift(conn, 0.0)).drift_units == 0


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
async def test_a_user_who_may_not_read_the_order_tables_checks_the_product_side(
    db: Db,
    target: tuple[str, URL, bool],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The product service's own user (deploy.md: it has no right on the order tables): on
    PostgreSQL, which lists them anyway, the run checks the product side and says why,
    instead of failing on the first order query (exit 2)."""
    shop = await _shop(db.engine)
    role, password = f"rc_products_{secrets.token_hex(4)}", secrets.token_hex(8)
    product_tables = "products, stock_adjustments, stock_reservations, reservation_lines"
    await _execute(
        db.engine,
        sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        sa.text(f"GRANT SELECT, INSERT, UPDATE ON {product_tables} TO {role}"),
        sa.text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"),
    )
    try:
        url = make_url(target[0]).set(username=role, password=password)
        await _execute(
            db.engine,
            products.update().where(products.c.id == shop.products[2]).values(qty=0),
        )
        status, out = await _cli(
            monkeypatch, capsys, url.render_as_string(hide_password=False), "--fix"
        )
        assert status == 1, out
        assert "order tables not readable by this user: product side only" in out
        assert f"fixed product {shop.products[2]}: ledger entry -1" in out
        report = await reconcile.reconcile(db.engine, pending_older_than=60)
        assert report.clean and report.orders_checked == 4, report  # as its owner: all
    finally:
        await _execute(db.engine, sa.text(f"DROP OWNED BY {role}"), sa.text(f"DROP ROLE {role}"))

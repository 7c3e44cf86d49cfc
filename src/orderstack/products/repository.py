"""Product storage: tables, the repository, and the product service's unit of work."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack.cache.port import CachedProduct
from orderstack.messaging.inbox import inbox_table
from orderstack.messaging.outbox import outbox_table
from orderstack.messaging.uow import SqlUnitOfWork
from orderstack.products.caching import cache_entry, tombstone
from orderstack.products.domain import (
    NewProduct,
    Product,
    ProductChanges,
    Refusal,
    Refused,
    Reservation,
    ReservationOutcome,
    ShortLine,
    StockAdjustment,
    StockLine,
)
from orderstack.storage.inserts import insert_rows, insert_with_ids, returning_supported
from orderstack.storage.slots import NO_ROW, filled, in_slots, slots
from orderstack.storage.types import BigId, Money, UtcDateTime

metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("price", Money, nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("deleted_at", UtcDateTime, nullable=True),
    sa.CheckConstraint("qty >= 0", name="ck_products_qty_not_negative"),
    sa.Index("ix_products_updated_at", "updated_at"),
)

# One row per order the service has answered or seen cancelled: the guard that an order's
# stock is taken at most once, and given back at most once, whatever ids its events carry.
# A confirmed order holds the units of its lines (``reservation_lines``); a failed or
# cancelled one holds none. ``product_id``: a one-line order's product (NULL for several
# lines, migration products_0007); ``quantity``: its units in all; ``refusal``: why a failed
# order took nothing (JSON: reason, short lines, catalog total), to answer it again alike.
stock_reservations = sa.Table(
    "stock_reservations",
    metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("product_id", sa.BigInteger, nullable=True, index=True),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("cancelled_at", UtcDateTime, nullable=True),
    sa.Column("refusal", sa.Text, nullable=True),
)

# The lines of each confirmed reservation: units of a product (an order's lines for it
# summed) and the unit price they were taken at (NULL: taken before lines were priced,
# migration products_0007). With it, for every product: units held by confirmed orders =
# sum of these lines' quantities whose reservation is confirmed.
reservation_lines = sa.Table(
    "reservation_lines",
    metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("product_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", Money, nullable=True),
    sa.Index("ix_reservation_lines_product_id_order_id", "product_id", "order_id"),
)

# The stock ledger: every change of a product's qty that is not an order's reservation
# (or its cancellation), written in the same transaction as the change. With it, for every
# product: units held by confirmed reservations = sum(delta) - qty.
stock_adjustments = sa.Table(
    "stock_adjustments",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("product_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("delta", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("qty_after", sa.BigInteger, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# The database's epoch, one row (migration products_0006): the identity its cache entries
# carry, so that a cache never serves one database's entries for another's rows.
products_epoch = sa.Table(
    "products_epoch",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.String(32), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

outbox = outbox_table(metadata, "products")
inbox = inbox_table(metadata, "products")

_COLUMNS = (
    products.c.id,
    products.c.name,
    products.c.price,
    products.c.qty,
    products.c.created_at,
    products.c.updated_at,
    products.c.version,
)


def refusal_to_json(refusal: Refusal | None) -> str | None:
    """A refusal as the ``refusal`` column keeps it."""
    if refusal is None:
        return None
    total = refusal.catalog_total
    return json.dumps(
        {
            "reason": refusal.reason.value,
            "short": [[s.product_id, s.requested, s.available] for s in refusal.short],
            "total": None if total is None else str(total),
        }
    )


def refusal_from_json(text: str | None) -> Refusal | None:
    if not text:
        return None
    data = json.loads(text)
    total = data.get("total")
    return Refusal(
        Refused(data["reason"]),
        tuple(ShortLine(*line) for line in data.get("short", ())),
        None if total is None else Decimal(total),
    )


@functools.lru_cache(maxsize=32)
def _stock_update(size: int) -> sa.Update:
    """The UPDATE of ``save_stock`` for up to ``size`` products (storage/slots.py):
    ``id{i}``, ``qty{i}``, ``version{i}``, and ``now``."""
    ids = [sa.bindparam(f"id{i}", type_=BigId) for i in range(size)]
    return (
        products.update()
        .where(products.c.id.in_(ids))
        .values(
            qty=sa.case(
                *[
                    (products.c.id == ids[i], sa.bindparam(f"qty{i}", type_=sa.Integer))
                    for i in range(size)
                ]
            ),
            version=sa.case(
                *[
                    (products.c.id == ids[i], sa.bindparam(f"version{i}", type_=sa.BigInteger))
                    for i in range(size)
                ]
            ),
            updated_at=sa.bindparam("now", type_=UtcDateTime),
        )
    )


@functools.lru_cache(maxsize=32)
def _locked(size: int) -> sa.Select[Any]:
    """The products ``id{i}`` (up to ``size``, storage/slots.py), locked, in id order."""
    return (
        sa.select(*_COLUMNS, products.c.deleted_at)
        .where(in_slots(products.c.id, "id", size))
        .order_by(products.c.id)
        .with_for_update()
    )


@functools.lru_cache(maxsize=32)
def _reservations(size: int) -> sa.Select[Any]:
    """The recorded reservations of orders ``id{i}`` (up to ``size``)."""
    return sa.select(
        stock_reservations.c.order_id,
        stock_reservations.c.product_id,
        stock_reservations.c.quantity,
        stock_reservations.c.outcome,
        stock_reservations.c.refusal,
    ).where(in_slots(stock_reservations.c.order_id, "id", size))


@functools.lru_cache(maxsize=32)
def _reservation_lines(size: int) -> sa.Select[Any]:
    """The lines of the reservations of orders ``id{i}`` (up to ``size``), in order."""
    return (
        sa.select(
            reservation_lines.c.order_id,
            reservation_lines.c.product_id,
            reservation_lines.c.quantity,
            reservation_lines.c.unit_price,
        )
        .where(in_slots(reservation_lines.c.order_id, "id", size))
        .order_by(reservation_lines.c.order_id, reservation_lines.c.product_id)
    )


def _product(row: Any) -> Product:
    return Product(
        id=row.id,
        name=row.name,
        price=row.price,
        qty=row.qty,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
    )


class SqlProductRepository:
    def __init__(self, conn: AsyncConnection, *, insert_returning: bool | None = None) -> None:
        """``insert_returning``: whether to take the new ids from ``INSERT … RETURNING``;
        None asks the server (MariaDB 10.5+, PostgreSQL and SQLite have it, MySQL 8 not)."""
        self._conn = conn
        self._returning = returning_supported(conn, insert_returning)

    async def add_many(self, new: Sequence[NewProduct], now: datetime) -> list[Product]:
        """Insert products (version 1); return them with their ids, in order
        (storage/inserts.py: one statement, or one per product on MySQL 8)."""
        rows = [
            {
                "name": n.name,
                "price": n.price,
                "qty": n.qty,
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
            for n in new
        ]
        ids = await insert_with_ids(self._conn, products, rows, returning=self._returning)
        return [
            Product(product_id, n.name, n.price, n.qty, now, now, 1)
            for product_id, n in zip(ids, new, strict=True)
        ]

    async def record_openings(self, opened: Sequence[Product], reason: str, now: datetime) -> None:
        """Each new product's opening entry in the stock ledger (delta = qty_after = its
        qty), in one statement."""
        await self._conn.execute(
            stock_adjustments.insert(),
            [
                {
                    "product_id": p.id,
                    "delta": p.qty,
                    "reason": reason,
                    "qty_after": p.qty,
                    "created_at": now,
                }
                for p in opened
            ],
        )

    async def epoch(self) -> str:
        """The database's epoch (``products_epoch``). Raises LookupError when its row is
        missing (a schema not migrated to products_0006)."""
        epoch = await self._conn.scalar(
            sa.select(products_epoch.c.epoch).where(products_epoch.c.id == 1)
        )
        if not epoch:
            raise LookupError("products_epoch has no row: run `orderstack migrate up`")
        return str(epoch)

    async def changed_since(
        self, since: datetime | None, after_id: int, limit: int
    ) -> list[CachedProduct]:
        """Cache entries of the products (deleted ones as tombstones) whose row changed at
        or after ``since`` (None: every product), by id above ``after_id``, up to
        ``limit``: one page of a scan, read along the primary key."""
        condition = [products.c.id > after_id]
        if since is not None:
            condition.append(products.c.updated_at >= since)
        rows = await self._conn.execute(
            sa.select(*_COLUMNS, products.c.deleted_at)
            .where(*condition)
            .order_by(products.c.id)
            .limit(limit)
        )
        return [
            tombstone(row.id, row.version)
            if row.deleted_at is not None
            else cache_entry(_product(row))
            for row in rows
        ]

    async def get(self, product_id: int) -> Product | None:
        row = (
            await self._conn.execute(
                sa.select(*_COLUMNS).where(
                    products.c.id == product_id, products.c.deleted_at.is_(None)
                )
            )
        ).first()
        return _product(row) if row else None

    async def page(self, limit: int, offset: int) -> tuple[list[Product], int]:
        alive = products.c.deleted_at.is_(None)
        rows = await self._conn.execute(
            sa.select(*_COLUMNS).where(alive).order_by(products.c.id).limit(limit).offset(offset)
        )
        total = await self._conn.scalar(sa.select(sa.func.count()).where(alive))
        return [_product(r) for r in rows], int(total or 0)

    async def lock(self, product_id: int) -> Product | None:
        """Read the live product and lock its row (``FOR UPDATE``) until the transaction
        ends; None when there is no such product."""
        row = (
            await self._conn.execute(
                sa.select(*_COLUMNS)
                .where(products.c.id == product_id, products.c.deleted_at.is_(None))
                .with_for_update()
            )
        ).first()
        return _product(row) if row else None

    async def update(
        self,
        product_id: int,
        changes: ProductChanges,
        now: datetime,
        expected_versions: Collection[int] | None = None,
    ) -> bool:
        """Apply a partial update and bump the version; False when there is no such product
        or, with ``expected_versions``, when its version is none of them. The version check
        is part of the UPDATE's condition, so no other change can slip in between."""
        condition = [products.c.id == product_id, products.c.deleted_at.is_(None)]
        if expected_versions is not None:
            condition.append(products.c.version.in_(list(expected_versions)))
        result = await self._conn.execute(
            products.update()
            .where(*condition)
            .values(**changes, updated_at=now, version=products.c.version + 1)
        )
        return result.rowcount == 1

    async def add_to_qty(self, product_id: int, delta: int, now: datetime) -> bool:
        """``qty = qty + delta`` and bump the version, only while the result stays at or
        above zero; False when nothing was changed (no such product, or not enough stock)."""
        result = await self._conn.execute(
            products.update()
            .where(
                products.c.id == product_id,
                products.c.deleted_at.is_(None),
                products.c.qty + delta >= 0,
            )
            .values(qty=products.c.qty + delta, updated_at=now, version=products.c.version + 1)
        )
        return result.rowcount == 1

    async def record_adjustment(
        self, product_id: int, delta: int, reason: str, qty_after: int, now: datetime
    ) -> StockAdjustment:
        """Append one entry to the stock ledger."""
        result = await self._conn.execute(
            stock_adjustments.insert().values(
                product_id=product_id,
                delta=delta,
                reason=reason,
                qty_after=qty_after,
                created_at=now,
            )
        )
        adjustment_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return StockAdjustment(adjustment_id, product_id, delta, reason, qty_after, now)

    async def delete(self, product_id: int, now: datetime) -> int | None:
        """Soft-delete; return the tombstone's version, or None when there is no such product."""
        result = await self._conn.execute(
            products.update()
            .where(products.c.id == product_id, products.c.deleted_at.is_(None))
            .values(deleted_at=now, updated_at=now, version=products.c.version + 1)
        )
        if result.rowcount != 1:
            return None
        return await self._conn.scalar(
            sa.select(products.c.version).where(products.c.id == product_id)
        )

    async def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]:
        """Read the products and lock their rows (``FOR UPDATE``, in id order, so that two
        transactions locking overlapping sets cannot deadlock) until the transaction ends.
        Deleted products are included, marked ``deleted`` (their row is locked too: a
        cancellation gives units back to it); products that do not exist are left out."""
        if not product_ids:
            return {}
        ids = sorted(product_ids)
        size = slots(len(ids))
        rows = await self._conn.execute(_locked(size), filled("id", ids, size))
        return {row.id: replace(_product(row), deleted=row.deleted_at is not None) for row in rows}

    async def save_stock(self, changed: Sequence[Product], now: datetime) -> None:
        """Write the quantities and versions of products whose rows this transaction
        holds locked (``lock_many``), in one UPDATE. The CHECK constraint backs up what
        the domain guarantees: never below zero."""
        if not changed:
            return
        by_id = {p.id: p for p in changed}
        written = sorted(by_id)
        size = slots(len(written))
        params: dict[str, Any] = {"now": now}
        for i in range(size):
            product = by_id.get(written[i]) if i < len(written) else None
            params[f"id{i}"] = product.id if product is not None else NO_ROW
            params[f"qty{i}"] = product.qty if product is not None else 0
            params[f"version{i}"] = product.version if product is not None else 0
        await self._conn.execute(_stock_update(size), params)

    async def reservations_of(self, order_ids: Sequence[int]) -> dict[int, Reservation]:
        """The recorded reservation of each of these orders that has one, with its lines.
        Read after the products' rows are locked, it sees what every earlier holder of
        those locks wrote (READ COMMITTED)."""
        if not order_ids:
            return {}
        ids = list(order_ids)
        size = slots(len(ids))
        rows = (await self._conn.execute(_reservations(size), filled("id", ids, size))).all()
        if not rows:
            return {}
        lines: dict[int, list[StockLine]] = {}
        found = [row.order_id for row in rows]
        size = slots(len(found))
        for line in await self._conn.execute(_reservation_lines(size), filled("id", found, size)):
            lines.setdefault(line.order_id, []).append(
                StockLine(line.product_id, line.quantity, line.unit_price)
            )
        return {
            row.order_id: Reservation(
                row.order_id,
                row.product_id,
                row.quantity,
                ReservationOutcome(row.outcome),
                tuple(lines.get(row.order_id, ())),
                refusal_from_json(row.refusal),
            )
            for row in rows
        }

    async def held_units(self, product_id: int) -> int:
        """The units the product's confirmed orders hold (what cancels could give back)."""
        total = await self._conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(reservation_lines.c.quantity), 0))
            .select_from(
                reservation_lines.join(
                    stock_reservations,
                    stock_reservations.c.order_id == reservation_lines.c.order_id,
                )
            )
            .where(
                reservation_lines.c.product_id == product_id,
                stock_reservations.c.outcome == ReservationOutcome.CONFIRMED.value,
            )
        )
        return int(total or 0)

    async def record_reservations(self, new: Sequence[Reservation], now: datetime) -> None:
        """Insert reservations of orders that have none yet (IntegrityError otherwise), and
        the lines of the confirmed ones."""
        if not new:
            return
        await insert_rows(
            self._conn,
            stock_reservations,
            [
                {
                    "order_id": r.order_id,
                    "product_id": r.product_id,
                    "outcome": str(r.outcome),
                    "quantity": r.quantity,
                    "created_at": now,
                    "cancelled_at": now if r.outcome is ReservationOutcome.CANCELLED else None,
                    "refusal": refusal_to_json(r.refusal),
                }
                for r in new
            ],
        )
        held = [
            {
                "order_id": r.order_id,
                "product_id": line.product_id,
                "quantity": line.quantity,
                "unit_price": line.unit_price,
            }
            for r in new
            if r.outcome is ReservationOutcome.CONFIRMED
            for line in r.lines
        ]
        if held:
            await insert_rows(self._conn, reservation_lines, held)

    async def mark_cancelled(self, order_ids: Sequence[int], now: datetime) -> int:
        """Mark these orders' recorded reservations cancelled (those not cancelled yet);
        return how many changed."""
        if not order_ids:
            return 0
        cancelled = ReservationOutcome.CANCELLED.value
        result = await self._conn.execute(
            stock_reservations.update()
            .where(
                stock_reservations.c.order_id.in_(list(order_ids)),
                stock_reservations.c.outcome != cancelled,
            )
            .values(outcome=cancelled, cancelled_at=now)
        )
        return int(result.rowcount)


class ProductUnitOfWork(SqlUnitOfWork):
    products: SqlProductRepository

    def __init__(
        self,
        engine: AsyncEngine,
        on_events_committed: Callable[[], None] | None,
        *,
        insert_returning: bool | None = None,
    ) -> None:
        super().__init__(engine, outbox, inbox, on_events_committed)
        self._insert_returning = insert_returning

    def _bind(self, conn: AsyncConnection) -> None:
        self.products = SqlProductRepository(conn, insert_returning=self._insert_returning)

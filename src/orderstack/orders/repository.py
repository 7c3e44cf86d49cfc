"""Order storage: tables, the repository, and the order service's unit of work."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack.messaging.inbox import inbox_table
from orderstack.messaging.outbox import outbox_table
from orderstack.messaging.uow import SqlUnitOfWork
from orderstack.orders.domain import NewOrder, Order, OrderStatus
from orderstack.storage.inserts import insert_with_ids, returning_supported
from orderstack.storage.types import BigId, Money, UtcDateTime

metadata = sa.MetaData()

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("product_id", sa.BigInteger, nullable=False),
    sa.Column("total_price", Money, nullable=False),
    # Units of the product (migration orders_0005; rows from before it have 1).
    sa.Column("quantity", sa.Integer, nullable=False, server_default="1"),
    sa.Column("status", sa.String(16), nullable=False),
    # Compared exactly (a binary collation on MySQL/MariaDB, see migration orders_0002):
    # idempotency keys are case- and accent-sensitive.
    sa.Column("request_id", sa.String(64), nullable=True, unique=True),
    sa.Column("request_fingerprint", sa.String(64), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # The sweeper's resends of the order's order.created so far, and when the next is due
    # (NULL: ORDER_PENDING_RESEND_SECONDS after updated_at); migration orders_0007.
    sa.Column("resends", sa.Integer, nullable=False, server_default="0"),
    sa.Column("resend_at", UtcDateTime, nullable=True),
    sa.Index("ix_orders_product_id_id", "product_id", "id"),
    sa.Index("ix_orders_status_updated_at", "status", "updated_at"),
    # Listing by status, and by product and status, in id order (migration orders_0004).
    sa.Index("ix_orders_status_id", "status", "id"),
    sa.Index("ix_orders_product_id_status_id", "product_id", "status", "id"),
    sa.Index("ix_orders_status_resend_at", "status", "resend_at", "updated_at"),
)
outbox = outbox_table(metadata, "orders")
inbox = inbox_table(metadata, "orders")

_COLUMNS = (
    orders.c.id,
    orders.c.product_id,
    orders.c.total_price,
    orders.c.status,
    orders.c.created_at,
    orders.c.quantity,
)


def _order(row: Any) -> Order:
    return Order(
        row.id,
        row.product_id,
        row.total_price,
        OrderStatus(row.status),
        row.created_at,
        row.quantity,
    )


class SqlOrderRepository:
    def __init__(self, conn: AsyncConnection, *, insert_returning: bool | None = None) -> None:
        """``insert_returning``: whether to take the new ids from ``INSERT … RETURNING``;
        None asks the server (MariaDB 10.5+, PostgreSQL and SQLite have it, MySQL 8 not)."""
        self._conn = conn
        self._returning = returning_supported(conn, insert_returning)

    async def add_many(self, new: Sequence[NewOrder], now: datetime) -> list[Order]:
        """Insert pending orders; return them with their ids, in order (storage/inserts.py:
        one statement, or one per order on MySQL 8). Raises IntegrityError when a
        ``request_id`` was used (then, the transaction rolls back)."""
        rows = [
            {
                "product_id": n.product_id,
                "total_price": n.total_price,
                "quantity": n.quantity,
                "status": OrderStatus.PENDING.value,
                "request_id": n.request_id,
                "request_fingerprint": n.request_fingerprint,
                "created_at": now,
                "updated_at": now,
            }
            for n in new
        ]
        ids = await insert_with_ids(self._conn, orders, rows, returning=self._returning)
        return [
            Order(order_id, n.product_id, n.total_price, OrderStatus.PENDING, now, n.quantity)
            for order_id, n in zip(ids, new, strict=True)
        ]

    async def get(self, order_id: int) -> Order | None:
        row = (
            await self._conn.execute(sa.select(*_COLUMNS).where(orders.c.id == order_id))
        ).first()
        return _order(row) if row else None

    async def by_request_id(self, request_id: str) -> tuple[Order, str | None] | None:
        """The order created with this idempotency key and the fingerprint of its request
        (None for orders stored before fingerprints were), or None."""
        row = (
            await self._conn.execute(
                sa.select(*_COLUMNS, orders.c.request_fingerprint).where(
                    orders.c.request_id == request_id
                )
            )
        ).first()
        return (_order(row), row.request_fingerprint) if row else None

    async def find(
        self,
        *,
        status: OrderStatus | None = None,
        product_id: int | None = None,
        after: int = 0,
        limit: int,
    ) -> list[Order]:
        """Up to ``limit`` orders with an id above ``after``, in id order, of that status
        and product when given. Each filter combination reads one index range in order
        (the primary key, ``ix_orders_product_id_id``, ``ix_orders_status_id``,
        ``ix_orders_product_id_status_id``) and stops after ``limit`` rows."""
        query = sa.select(*_COLUMNS).where(orders.c.id > after)
        if status is not None:
            query = query.where(orders.c.status == status.value)
        if product_id is not None:
            query = query.where(orders.c.product_id == product_id)
        rows = await self._conn.execute(query.order_by(orders.c.id).limit(limit))
        return [_order(r) for r in rows]

    async def move_many(
        self,
        order_ids: Sequence[int],
        status: OrderStatus,
        allowed_from: Collection[OrderStatus],
        now: datetime,
    ) -> int:
        """Move those of ``order_ids`` that are in one of ``allowed_from`` (the domain's
        ``moves_into(status)``) to ``status``; return how many moved. The condition sits in
        the UPDATE itself, so two concurrent moves of one order cannot both happen."""
        if not order_ids or not allowed_from:
            return 0
        result = await self._conn.execute(
            orders.update()
            .where(
                orders.c.id.in_(list(order_ids)),
                orders.c.status.in_([s.value for s in allowed_from]),
            )
            .values(status=status.value, updated_at=now)
        )
        return int(result.rowcount)

    async def claim_stale_pending(
        self,
        updated_before: datetime,
        limit: int,
        now: datetime,
        next_resend_at: Callable[[int], datetime] | None = None,
    ) -> list[Order]:
        """Lock up to ``limit`` pending orders due for a resend, record the resend and
        return them. Due: never resent (``resend_at`` NULL) and pending since before
        ``updated_before``, oldest first; then those whose ``resend_at`` has come, earliest
        first. Each claimed order's ``resends`` goes up by one, its ``updated_at`` becomes
        ``now`` and its ``resend_at`` ``next_resend_at(resends)`` (None: NULL, the next one
        due again after ``updated_before``'s delay).

        Rows another transaction holds are skipped (``FOR UPDATE SKIP LOCKED``), so
        concurrent callers on several replicas claim disjoint orders; the new ``resend_at``
        or ``updated_at`` keeps an order from being claimed again until it is due again.
        SQLite has no row locks and ignores the clause: its writers are serialised by the
        database lock (and the embedded default has a single connection). Each of the two
        ranges is one range of ``ix_orders_status_resend_at``, read in order.
        """
        pending = orders.c.status == OrderStatus.PENDING.value
        ranges = (
            (
                (orders.c.resend_at.is_(None), orders.c.updated_at < updated_before),
                (orders.c.updated_at, orders.c.id),
            ),
            ((orders.c.resend_at <= now,), (orders.c.resend_at, orders.c.id)),
        )
        rows: list[Any] = []
        for conditions, order in ranges:
            if len(rows) >= limit:
                break
            rows += (
                await self._conn.execute(
                    sa.select(*_COLUMNS, orders.c.resends)
                    .where(pending, *conditions)
                    .order_by(*order)
                    .limit(limit - len(rows))
                    .with_for_update(skip_locked=True)
                )
            ).all()
        by_resends: dict[int, list[int]] = {}
        for row in rows:
            by_resends.setdefault(row.resends, []).append(row.id)
        for resends, ids in by_resends.items():  # one UPDATE per count (a few, at most)
            done = resends + 1
            await self._conn.execute(
                orders.update()
                .where(orders.c.id.in_(ids), pending)
                .values(
                    updated_at=now,
                    resends=done,
                    resend_at=next_resend_at(done) if next_resend_at is not None else None,
                )
            )
        return [_order(r) for r in rows]


class OrderUnitOfWork(SqlUnitOfWork):
    orders: SqlOrderRepository

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
        self.orders = SqlOrderRepository(conn, insert_returning=self._insert_returning)

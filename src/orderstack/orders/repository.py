"""Order storage: tables, the repository, and the order service's unit of work."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack.messaging.inbox import inbox_table
from orderstack.messaging.outbox import outbox_table
from orderstack.messaging.uow import SqlUnitOfWork
from orderstack.orders.domain import (
    Failure,
    NewOrder,
    Order,
    OrderLine,
    OrderStatus,
    ShortLine,
)
from orderstack.orders.status_events import StatusEvent
from orderstack.orders.webhooks import (
    ACTIVE,
    DEAD,
    DELIVERED,
    PAUSED,
    REPLAYED,
    Delivery,
    Webhook,
)
from orderstack.storage.inserts import insert_rows, insert_with_ids, returning_supported
from orderstack.storage.slots import NO_ROW, filled, in_slots, one_of, slots
from orderstack.storage.types import BigId, Money, UtcDateTime, utcnow

metadata = sa.MetaData()

# An order of one line keeps it here (product_id, quantity, unit_price); an order of several
# lines has product_id NULL, quantity its units in all, and its lines in ``order_lines``
# (migration orders_0008).
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("product_id", sa.BigInteger, nullable=True),
    # The client's total, else the catalog's once priced; NULL until then (orders_0008).
    sa.Column("total_price", Money, nullable=True),
    # Units of the product (migration orders_0005; rows from before it have 1).
    sa.Column("quantity", sa.Integer, nullable=False, server_default="1"),
    # A one-line order's unit price, from the catalog row its units were taken from.
    sa.Column("unit_price", Money, nullable=True),
    # The total the client agreed to (strict price check): checked by the product service.
    sa.Column("agreed_total", Money, nullable=True),
    # Why a failed order failed (JSON: reason, short lines, catalog total).
    sa.Column("failure", sa.Text, nullable=True),
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
    # The customer who placed it, its token's subject (NULL: placed without one); a
    # customer's orders are read by ix_orders_customer_id_id (migration orders_0009).
    sa.Column("customer_id", sa.String(255), nullable=True),
    sa.Index("ix_orders_customer_id_id", "customer_id", "id"),
    sa.Index("ix_orders_product_id_id", "product_id", "id"),
    sa.Index("ix_orders_status_updated_at", "status", "updated_at"),
    # Listing by status, and by product and status, in id order (migration orders_0004).
    sa.Index("ix_orders_status_id", "status", "id"),
    sa.Index("ix_orders_product_id_status_id", "product_id", "status", "id"),
    sa.Index("ix_orders_status_resend_at", "status", "resend_at", "updated_at"),
    # A held order: how long its units stay reserved once taken (NULL: no hold), when a
    # reserved one expires (the database clock), and what its client sent with its confirm;
    # the expiry sweep reads due reserved orders by ix_orders_status_expires_at (orders_0011).
    sa.Column("hold_seconds", sa.Integer, nullable=True),
    sa.Column("expires_at", UtcDateTime, nullable=True),
    sa.Column("payment_reference", sa.String(128), nullable=True),
    sa.Index("ix_orders_status_expires_at", "status", "expires_at"),
)
# The lines of orders of several lines, as their client sent them (line_no from 0), and each
# line's unit price once the product service reserved it (migration orders_0008).
order_lines = sa.Table(
    "order_lines",
    metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("line_no", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("product_id", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", Money, nullable=True),
    sa.Index("ix_order_lines_product_id_order_id", "product_id", "order_id"),
)
# Each status an order entered, one row per change, written in the change's transaction
# (``add_many``, ``move_many``): the event ids of the order-status streams
# (orders/events_stream.py; migration orders_0010).
order_status_events = sa.Table(
    "order_status_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("customer_id", sa.String(255), nullable=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Index("ix_order_status_events_order_id_id", "order_id", "id"),
    sa.Index("ix_order_status_events_customer_id_id", "customer_id", "id"),
)
# The URLs order status changes are posted to (orders/webhooks.py; migration orders_0012).
order_webhooks = sa.Table(
    "order_webhooks",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("customer_id", sa.String(255), nullable=True),
    sa.Column("after_id", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime, nullable=True),
    sa.Column("last_error", sa.String(255), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),  # orders_0013
    sa.Column("delivery_upto", sa.BigInteger, nullable=True),
    sa.Column("failing_since", UtcDateTime, nullable=True),
    sa.Index("ix_order_webhooks_next_attempt_at", "next_attempt_at"),
)
# The webhook batches settled: delivered, dead, replayed (orders/webhooks.py; orders_0013).
order_webhook_deliveries = sa.Table(
    "order_webhook_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("hook_id", sa.BigInteger, nullable=False),
    sa.Column("after_id", sa.BigInteger, nullable=False),
    sa.Column("upto_id", sa.BigInteger, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.String(255), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("settled_at", UtcDateTime, nullable=False),
    sa.Index("ix_order_webhook_deliveries_hook_id_id", "hook_id", "id"),
    sa.Index("ix_order_webhook_deliveries_status_id", "status", "id"),
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
    orders.c.unit_price,
    orders.c.agreed_total,
    orders.c.customer_id,
    orders.c.failure,
    orders.c.hold_seconds,
    orders.c.expires_at,
    orders.c.payment_reference,
)
# Where the units the product service took are held (prices are recorded there).
_TAKEN = [
    OrderStatus.CONFIRMED.value,
    OrderStatus.CANCELLED.value,
    OrderStatus.RESERVED.value,
    OrderStatus.EXPIRED.value,
]


def _money(value: Decimal) -> sa.ColumnElement[Decimal]:
    """An amount in a statement, typed as a money column (SQLite keeps money as text)."""
    return sa.literal(value, Money())


@functools.lru_cache(maxsize=32)
def _prices_update(size: int) -> sa.Update:
    """The UPDATE of ``record_prices`` for up to ``size`` orders (storage/slots.py):
    ``id{i}``, ``total{i}`` (the catalog
    total, written where the order has none) and ``unit{i}`` (a one-line order's unit
    price, written where it has none); NULL leaves the row's value."""
    ids = [sa.bindparam(f"id{i}", type_=BigId) for i in range(size)]
    totals = sa.case(
        *[(orders.c.id == ids[i], sa.bindparam(f"total{i}", type_=Money())) for i in range(size)],
        else_=None,
    )
    units = sa.case(
        *[(orders.c.id == ids[i], sa.bindparam(f"unit{i}", type_=Money())) for i in range(size)],
        else_=None,
    )
    return (
        orders.update()
        .where(orders.c.id.in_(ids), one_of(orders.c.status, _TAKEN))
        .values(
            total_price=sa.func.coalesce(orders.c.total_price, totals),
            unit_price=sa.case(
                (orders.c.product_id.is_(None), orders.c.unit_price),
                else_=sa.func.coalesce(orders.c.unit_price, units),
            ),
        )
    )


@functools.lru_cache(maxsize=64)
def _move(size: int, status: str, allowed_from: tuple[str, ...], held: bool | None) -> sa.Update:
    """The UPDATE of ``move_many`` for up to ``size`` orders (storage/slots.py): ``id{i}``
    and ``moved_at``, the ``updated_at`` it writes."""
    conditions = [in_slots(orders.c.id, "id", size), one_of(orders.c.status, allowed_from)]
    if held is not None:
        hold = orders.c.hold_seconds
        conditions.append(hold.is_not(None) if held else hold.is_(None))
    return (
        orders.update()
        .where(*conditions)
        .values(status=status, updated_at=sa.bindparam("moved_at", type_=UtcDateTime))
    )


@functools.lru_cache(maxsize=64)
def _moved(size: int, status: str) -> sa.Select[Any]:
    """The orders of ``id{i}`` (up to ``size``) that ``_move`` moved into ``status`` at
    ``moved_at``, by id."""
    return (
        sa.select(orders.c.id, orders.c.customer_id)
        .where(
            in_slots(orders.c.id, "id", size),
            orders.c.status == status,
            orders.c.updated_at == sa.bindparam("moved_at", type_=UtcDateTime),
        )
        .order_by(orders.c.id)
    )


@functools.lru_cache(maxsize=32)
def _holding_lines(size: int) -> sa.Select[Any]:
    """Which of ``id{i}`` (up to ``size``) are orders of several lines (their lines are rows
    of ``order_lines``) holding their units."""
    return sa.select(orders.c.id).where(
        in_slots(orders.c.id, "id", size),
        orders.c.product_id.is_(None),
        one_of(orders.c.status, _TAKEN),
    )


def failure_to_json(failure: Failure) -> str:
    total = failure.catalog_total
    return json.dumps(
        {
            "reason": failure.reason,
            "short": [[s.product_id, s.requested, s.available] for s in failure.short],
            "total": None if total is None else str(total),
        }
    )


def failure_from_json(text: str | None) -> Failure | None:
    if not text:
        return None
    data = json.loads(text)
    total = data.get("total")
    return Failure(
        data.get("reason"),
        tuple(ShortLine(*line) for line in data.get("short", ())),
        None if total is None else Decimal(total),
    )


def _order(row: Any, lines: Sequence[OrderLine] = ()) -> Order:
    items = (
        (OrderLine(row.product_id, row.quantity, row.unit_price),)
        if row.product_id is not None
        else tuple(lines)
    )
    return Order(
        row.id,
        items,
        row.total_price,
        OrderStatus(row.status),
        row.created_at,
        row.agreed_total,
        failure_from_json(row.failure),
        row.customer_id,
        row.hold_seconds,
        row.expires_at,
        row.payment_reference,
    )


def database_clock(conn: AsyncConnection, fallback: datetime) -> sa.ColumnElement[datetime]:
    """The database's clock now, in UTC, as a naive timestamp comparable with a UtcDateTime
    column: ``UTC_TIMESTAMP(6)`` on MySQL/MariaDB, ``timezone('UTC', clock_timestamp())`` on
    PostgreSQL (whatever the session's time zone). SQLite has no clock of its own worth the
    name and runs in the service's process: there it is ``fallback`` (the service's clock)."""
    name = conn.dialect.name
    if name == "mysql":
        return sa.func.utc_timestamp(6, type_=UtcDateTime())
    if name == "postgresql":
        return sa.func.timezone("UTC", sa.func.clock_timestamp(), type_=UtcDateTime())
    return sa.literal(fallback, UtcDateTime())


class SqlOrderRepository:
    def __init__(self, conn: AsyncConnection, *, insert_returning: bool | None = None) -> None:
        """``insert_returning``: whether to take the new ids from ``INSERT … RETURNING``;
        None asks the server (MariaDB 10.5+, PostgreSQL and SQLite have it, MySQL 8 not)."""
        self._conn = conn
        self._returning = returning_supported(conn, insert_returning)

    async def add_many(self, new: Sequence[NewOrder], now: datetime) -> list[Order]:
        """Insert pending orders and the lines of those of several; return them with their
        ids, in order (storage/inserts.py: one statement, or one per order on MySQL 8).
        Raises IntegrityError when a ``request_id`` was used (then, the transaction rolls
        back)."""
        rows = [
            {
                "product_id": n.items[0].product_id if len(n.items) == 1 else None,
                "total_price": n.total_price,
                "quantity": sum(line.quantity for line in n.items),
                "agreed_total": n.agreed_total,
                "status": OrderStatus.PENDING.value,
                "request_id": n.request_id,
                "request_fingerprint": n.request_fingerprint,
                "customer_id": n.customer_id,
                "hold_seconds": n.hold_seconds,
                "created_at": now,
                "updated_at": now,
            }
            for n in new
        ]
        ids = await insert_with_ids(self._conn, orders, rows, returning=self._returning)
        lines = [
            {
                "order_id": order_id,
                "line_no": line_no,
                "product_id": line.product_id,
                "quantity": line.quantity,
            }
            for order_id, n in zip(ids, new, strict=True)
            if len(n.items) > 1
            for line_no, line in enumerate(n.items)
        ]
        if lines:
            await insert_rows(self._conn, order_lines, lines)
        # Their first event (pending): one statement of many rows (``_add_events``).
        await self._add_events(
            [(order_id, n.customer_id) for order_id, n in zip(ids, new, strict=True)],
            OrderStatus.PENDING.value,
            now,
        )
        return [
            Order(
                order_id,
                n.items,
                n.total_price,
                OrderStatus.PENDING,
                now,
                n.agreed_total,
                customer_id=n.customer_id,
                hold_seconds=n.hold_seconds,
            )
            for order_id, n in zip(ids, new, strict=True)
        ]

    async def _orders(self, rows: Sequence[Any]) -> list[Order]:
        """The orders of these rows, the lines of those of several read in one query."""
        several = [row.id for row in rows if row.product_id is None]
        lines: dict[int, list[OrderLine]] = {}
        if several:
            for line in await self._conn.execute(
                sa.select(
                    order_lines.c.order_id,
                    order_lines.c.product_id,
                    order_lines.c.quantity,
                    order_lines.c.unit_price,
                )
                .where(order_lines.c.order_id.in_(several))
                .order_by(order_lines.c.order_id, order_lines.c.line_no)
            ):
                lines.setdefault(line.order_id, []).append(
                    OrderLine(line.product_id, line.quantity, line.unit_price)
                )
        return [_order(row, lines.get(row.id, ())) for row in rows]

    async def get(self, order_id: int) -> Order | None:
        row = (
            await self._conn.execute(sa.select(*_COLUMNS).where(orders.c.id == order_id))
        ).first()
        return (await self._orders([row]))[0] if row else None

    async def lock(self, order_id: int) -> Order | None:
        """``get``, the row locked until the transaction ends (``FOR UPDATE``, by primary
        key; SQLite: its one writer). A move that locks its order first takes the locks in
        the expiry sweep's order (the row, then its index entries) and never deadlocks
        with it: an UPDATE by ``id IN (…) AND status IN (…)`` may lock the status index
        entry first (InnoDB, by ix_orders_status_id), then wait for a row the sweep holds."""
        row = (
            await self._conn.execute(
                sa.select(*_COLUMNS).where(orders.c.id == order_id).with_for_update()
            )
        ).first()
        return (await self._orders([row]))[0] if row else None

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
        return ((await self._orders([row]))[0], row.request_fingerprint) if row else None

    async def find(
        self,
        *,
        status: OrderStatus | None = None,
        product_id: int | None = None,
        customer_id: str | None = None,
        after: int = 0,
        limit: int,
    ) -> list[Order]:
        """Up to ``limit`` orders with an id above ``after``, in id order, of that status
        when given, of that customer when given, and with a line for that product when
        given (a customer's: ``ix_orders_customer_id_id``, filtered). Each filter combination
        reads index ranges in order and stops after ``limit`` rows: the primary key,
        ``ix_orders_status_id``; for a product, its one-line orders
        (``ix_orders_product_id_id``, ``ix_orders_product_id_status_id``) and its lines in
        orders of several (``ix_order_lines_product_id_order_id``), merged."""
        query = sa.select(*_COLUMNS).where(orders.c.id > after)
        if status is not None:
            query = query.where(orders.c.status == status.value)
        if customer_id is not None:
            query = query.where(orders.c.customer_id == customer_id)
        if product_id is None:
            rows = (await self._conn.execute(query.order_by(orders.c.id).limit(limit))).all()
            return await self._orders(rows)
        one_line = (
            await self._conn.execute(
                query.where(orders.c.product_id == product_id).order_by(orders.c.id).limit(limit)
            )
        ).all()
        in_lines = (
            sa.select(order_lines.c.order_id)
            .where(order_lines.c.product_id == product_id, order_lines.c.order_id > after)
            .distinct()
            .order_by(order_lines.c.order_id)
            .limit(limit)
        )
        if status is not None or customer_id is not None:
            in_lines = in_lines.join(orders, orders.c.id == order_lines.c.order_id)
        if status is not None:
            in_lines = in_lines.where(orders.c.status == status.value)
        if customer_id is not None:
            in_lines = in_lines.where(orders.c.customer_id == customer_id)
        ids = list((await self._conn.scalars(in_lines)).all())
        several = (
            (
                await self._conn.execute(
                    sa.select(*_COLUMNS).where(orders.c.id.in_(ids)).order_by(orders.c.id)
                )
            ).all()
            if ids
            else []
        )
        merged = sorted([*one_line, *several], key=lambda row: row.id)[:limit]
        return await self._orders(merged)

    async def record_prices(
        self, priced: Mapping[int, tuple[Sequence[OrderLine], Decimal | None]]
    ) -> None:
        """Write the unit prices the product service reserved each order's lines at (one
        line per product), and the catalog total of orders without one, for those of
        ``priced`` that are confirmed (or were, and are cancelled since). Prices written
        once stay: a repeated answer changes nothing."""
        if not priced:
            return
        unit: dict[tuple[int, int], Decimal] = {
            (order_id, line.product_id): line.unit_price
            for order_id, (lines, _) in priced.items()
            for line in lines
            if line.unit_price is not None
        }
        totals = {oid: total for oid, (_, total) in priced.items() if total is not None}
        one_line = {oid: price for (oid, _), price in unit.items()}
        if totals or one_line:
            # One UPDATE of the orders rows: the catalog total where the order has none, a
            # one-line order's unit price where it has none (a CASE without a match, or a
            # NULL, so COALESCE keeps what the row holds). Unused slots name no order (0).
            written = sorted({*totals, *one_line})
            size = slots(len(written))
            params: dict[str, Any] = {}
            for i in range(size):
                oid = written[i] if i < len(written) else NO_ROW
                params[f"id{i}"] = oid
                params[f"total{i}"] = totals.get(oid)
                params[f"unit{i}"] = one_line.get(oid)
            await self._conn.execute(_prices_update(size), params)
        if unit:
            # Lines are rows of their own only for orders of several lines (product_id
            # NULL on the orders row): found first, so that a batch of one-line orders
            # (most of them) builds no CASE of a branch per order and updates nothing.
            asked = list(one_line)
            size = slots(len(asked))
            holding = set(
                (
                    await self._conn.execute(_holding_lines(size), filled("id", asked, size))
                ).scalars()
            )
            whens = [
                (
                    sa.and_(order_lines.c.order_id == oid, order_lines.c.product_id == pid),
                    _money(price),
                )
                for (oid, pid), price in unit.items()
                if oid in holding
            ]
            if whens:
                await self._conn.execute(
                    order_lines.update()
                    .where(
                        order_lines.c.order_id.in_(sorted(holding)),
                        order_lines.c.unit_price.is_(None),
                    )
                    .values(unit_price=sa.case(*whens, else_=order_lines.c.unit_price))
                )

    async def record_failures(self, failures: Mapping[int, Failure]) -> None:
        """Write why each of these orders failed, for those that are failed and have no
        reason yet."""
        if not failures:
            return
        texts = {oid: failure_to_json(failure) for oid, failure in failures.items()}
        await self._conn.execute(
            orders.update()
            .where(
                orders.c.id.in_(list(texts)),
                orders.c.status == OrderStatus.FAILED.value,
                orders.c.failure.is_(None),
            )
            .values(failure=sa.case(texts, value=orders.c.id))
        )

    async def move_many(
        self,
        order_ids: Sequence[int],
        status: OrderStatus,
        allowed_from: Collection[OrderStatus],
        now: datetime,
        *,
        held: bool | None = None,
        expiry: Literal["unexpired", "due"] | None = None,
        expires_at: datetime | None = None,
        payment_reference: str | None = None,
    ) -> int:
        """Move those of ``order_ids`` that are in one of ``allowed_from`` (the domain's
        ``moves_into(status)``) to ``status``; return how many moved. The condition sits in
        the UPDATE itself, so two concurrent moves of one order cannot both happen.

        Holds: ``held`` True/False moves only orders placed with/without a hold;
        ``expiry`` "unexpired"/"due" only those whose ``expires_at`` is after/not after
        the database's clock now (``database_clock``); ``expires_at`` and
        ``payment_reference``, when given, are written with the move.

        The orders moved get their event in ``order_status_events`` in the same
        transaction, whatever ``status`` is: the rows that now hold ``status`` with
        ``updated_at`` = ``now`` (the UPDATE's: they stay locked by it until COMMIT)."""
        if not order_ids or not allowed_from:
            return 0
        ids = list(order_ids)
        size = slots(len(ids))
        params = filled("id", ids, size)
        params["moved_at"] = now
        move = _move(size, status.value, tuple(sorted(s.value for s in allowed_from)), held)
        if expiry is not None:
            move = move.where(self._expiry_condition(expiry, now))
        if expires_at is not None or payment_reference is not None:
            move = move.values(**_hold_values(expires_at, payment_reference))
        moved = int((await self._conn.execute(move, params)).rowcount)
        if moved:
            # The rows just moved (a SELECT, then one multi-row INSERT of known size:
            # InnoDB may reserve more ids than an INSERT … SELECT uses, and an id never
            # used holds the streams back, see orders/status_events.py).
            rows = (await self._conn.execute(_moved(size, status.value), params)).all()
            await self._add_events([(row.id, row.customer_id) for row in rows], status.value, now)
        return moved

    async def _add_events(
        self, moved: Sequence[tuple[int, str | None]], status: str, now: datetime
    ) -> None:
        """One ``order_status_events`` row per (order id, customer) that entered ``status``,
        as an executemany of one cached statement: the drivers send it as one multi-row
        INSERT (asyncmy) or one pipelined prepared statement (asyncpg), of a known number of
        rows (InnoDB then reserves exactly their ids). A statement built with ``.values()``
        of every row was compiled afresh each time: it doubled the cost of a batch."""
        if moved:
            await insert_rows(
                self._conn,
                order_status_events,
                [
                    {"order_id": order_id, "status": status, "customer_id": customer, "at": now}
                    for order_id, customer in moved
                ],
            )

    def _expiry_condition(
        self, expiry: Literal["unexpired", "due"], now: datetime
    ) -> sa.ColumnElement[bool]:
        clock = database_clock(self._conn, now)
        at = orders.c.expires_at
        return at > clock if expiry == "unexpired" else at <= clock

    async def database_now(self, fallback: datetime) -> datetime:
        """The database's clock now (``database_clock``; ``fallback`` on SQLite)."""
        value = await self._conn.scalar(sa.select(database_clock(self._conn, fallback)))
        return value if isinstance(value, datetime) else fallback

    async def holds(self, order_ids: Sequence[int]) -> dict[int, int]:
        """The hold, in seconds, of each of these orders that is pending and was placed
        with one."""
        if not order_ids:
            return {}
        rows = await self._conn.execute(
            sa.select(orders.c.id, orders.c.hold_seconds).where(
                orders.c.id.in_(list(order_ids)),
                orders.c.status == OrderStatus.PENDING.value,
                orders.c.hold_seconds.is_not(None),
            )
        )
        return {int(row.id): int(row.hold_seconds) for row in rows}

    async def lock_expired(self, limit: int, now: datetime) -> list[Order]:
        """Lock and return up to ``limit`` reserved orders whose ``expires_at`` has come on
        the database's clock, earliest first (one range of ix_orders_status_expires_at).
        Rows another transaction holds are skipped (``FOR UPDATE SKIP LOCKED``: MySQL 8,
        MariaDB 10.6+, PostgreSQL), so replicas sweeping at once take disjoint orders, and a
        confirm that holds the row wins it; SQLite ignores the clause (one writer)."""
        rows = (
            await self._conn.execute(
                sa.select(*_COLUMNS)
                .where(
                    orders.c.status == OrderStatus.RESERVED.value,
                    orders.c.expires_at <= database_clock(self._conn, now),
                )
                .order_by(orders.c.expires_at, orders.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        return await self._orders(rows)

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
        return await self._orders(rows)


def _hold_values(expires_at: datetime | None, payment_reference: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if expires_at is not None:
        values["expires_at"] = expires_at
    if payment_reference is not None:
        values["payment_reference"] = payment_reference
    return values


class SqlStatusEventLog:
    """``order_status_events`` read outside any transaction (orders/status_events.py): by
    primary key for the process's reader, by ``ix_order_status_events_order_id_id`` or
    ``ix_order_status_events_customer_id_id`` for a stream that resumes from further back."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def last_id(self) -> int:
        async with self._engine.connect() as conn:
            found = await conn.scalar(sa.select(sa.func.max(order_status_events.c.id)))
        return int(found or 0)

    async def after(
        self,
        after: int,
        *,
        limit: int,
        upto: int | None = None,
        order_id: int | None = None,
        customer_id: str | None = None,
    ) -> list[StatusEvent]:
        t = order_status_events
        query = sa.select(t.c.id, t.c.order_id, t.c.status, t.c.customer_id, t.c.at).where(
            t.c.id > after
        )
        if upto is not None:
            query = query.where(t.c.id <= upto)
        if order_id is not None:
            query = query.where(t.c.order_id == order_id)
        if customer_id is not None:
            query = query.where(t.c.customer_id == customer_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.order_by(t.c.id).limit(limit))).all()
        return [StatusEvent(r.id, r.order_id, r.status, r.customer_id, r.at) for r in rows]


_HOOK_COLUMNS = (
    order_webhooks.c.id,
    order_webhooks.c.url,
    order_webhooks.c.secret,
    order_webhooks.c.customer_id,
    order_webhooks.c.after_id,
    order_webhooks.c.attempts,
    order_webhooks.c.last_error,
    order_webhooks.c.status,
    order_webhooks.c.delivery_upto,
    order_webhooks.c.failing_since,
)


def _hook(row: Any) -> Webhook:
    return Webhook(
        row.id,
        row.url,
        row.secret,
        row.customer_id,
        row.after_id,
        row.attempts,
        row.last_error,
        row.status,
        row.delivery_upto,
        row.failing_since,
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        row.id,
        row.hook_id,
        row.after_id,
        row.upto_id,
        row.events,
        row.status,
        row.attempts,
        row.last_error,
        row.created_at,
        row.settled_at,
    )


class SqlWebhookStore:
    """``order_webhooks``, each call its own short transaction (orders/webhooks.py): a hook
    is leased by a conditional UPDATE of ``next_attempt_at``, an outcome recorded by one
    conditional on ``after_id``; no lock is held while a URL is called."""

    def __init__(self, engine: AsyncEngine, *, keep_delivered: int = 10_000) -> None:
        self._engine = engine
        # Delivered rows are history: about the newest ``keep_delivered`` are kept (pruned
        # every 100th delivery, one indexed DELETE); dead and replayed ones stay.
        self._keep = keep_delivered

    async def add(self, url: str, secret: str, customer_id: str | None, after_id: int) -> Webhook:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                order_webhooks.insert().values(
                    url=url,
                    secret=secret,
                    customer_id=customer_id,
                    after_id=after_id,
                    created_at=utcnow(),
                )
            )
            hook_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        return Webhook(hook_id, url, secret, customer_id, after_id)

    async def all(self) -> list[Webhook]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(*_HOOK_COLUMNS).order_by(order_webhooks.c.id))
            return [_hook(row) for row in rows]

    async def remove(self, hook_id: int) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                order_webhooks.delete().where(order_webhooks.c.id == hook_id)
            )
        return bool(result.rowcount)

    async def claim(self, now: datetime, lease_until: datetime, limit: int) -> list[Webhook]:
        t = order_webhooks
        due = sa.and_(
            t.c.status == ACTIVE, sa.or_(t.c.next_attempt_at.is_(None), t.c.next_attempt_at <= now)
        )
        async with self._engine.begin() as conn:
            ids = list(
                (
                    await conn.scalars(
                        sa.select(t.c.id).where(due).order_by(t.c.next_attempt_at).limit(limit)
                    )
                ).all()
            )
        claimed: list[int] = []
        for hook_id in ids:  # one short transaction each: a lease, not a held lock
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    t.update().where(t.c.id == hook_id, due).values(next_attempt_at=lease_until)
                )
            if result.rowcount:
                claimed.append(hook_id)
        if not claimed:
            return []
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(*_HOOK_COLUMNS).where(t.c.id.in_(claimed)).order_by(t.c.id)
            )
            return [_hook(row) for row in rows]

    async def settle(
        self,
        hook: Webhook,
        *,
        after_id: int,
        attempts: int,
        next_attempt_at: datetime | None,
        error: str | None,
        delivery_upto: int | None = None,
        failing_since: datetime | None = None,
        status: str = ACTIVE,
        record: Delivery | None = None,
    ) -> bool:
        t = order_webhooks
        async with self._engine.begin() as conn:
            result = await conn.execute(
                t.update()
                .where(t.c.id == hook.id, t.c.after_id == hook.after_id)
                .values(
                    after_id=after_id,
                    attempts=attempts,
                    next_attempt_at=next_attempt_at,
                    last_error=error,
                    delivery_upto=delivery_upto,
                    failing_since=failing_since,
                    status=status,
                )
            )
            if result.rowcount and record is not None:
                inserted = await conn.execute(
                    order_webhook_deliveries.insert().values(
                        hook_id=record.hook_id,
                        after_id=record.after_id,
                        upto_id=record.upto_id,
                        events=record.events,
                        status=record.status,
                        attempts=record.attempts,
                        last_error=record.last_error,
                        created_at=record.created_at,
                        settled_at=record.settled_at,
                    )
                )
                row_id = int(inserted.inserted_primary_key[0])  # type: ignore[index]
                if record.status == DELIVERED and row_id % 100 == 0:
                    d = order_webhook_deliveries
                    await conn.execute(
                        d.delete().where(d.c.status == DELIVERED, d.c.id <= row_id - self._keep)
                    )
        return bool(result.rowcount)

    async def begin(self, hook: Webhook, upto: int) -> bool:
        t = order_webhooks
        async with self._engine.begin() as conn:
            result = await conn.execute(
                t.update()
                .where(
                    t.c.id == hook.id,
                    t.c.after_id == hook.after_id,
                    t.c.delivery_upto.is_(None),
                )
                .values(delivery_upto=upto)
            )
        return bool(result.rowcount)

    async def deliveries(self, status: str | None, limit: int) -> list[Delivery]:
        d = order_webhook_deliveries
        query = sa.select(d)
        if status is not None:
            query = query.where(d.c.status == status)
        async with self._engine.connect() as conn:
            rows = await conn.execute(query.order_by(d.c.id.desc()).limit(limit))
            return [_delivery(row) for row in rows]

    async def replay(self, delivery_id: int | None) -> list[Delivery]:
        d, t = order_webhook_deliveries, order_webhooks
        query = sa.select(d).where(d.c.status == DEAD)
        if delivery_id is not None:
            query = query.where(d.c.id == delivery_id)
        async with self._engine.connect() as conn:
            dead = [_delivery(row) for row in await conn.execute(query.order_by(d.c.id))]
        replayed: list[Delivery] = []
        for delivery in dead:  # each its own transaction: the hook resumes, the row says so
            async with self._engine.begin() as conn:
                resumed = await conn.execute(
                    t.update()
                    .where(
                        t.c.id == delivery.hook_id,
                        t.c.status == PAUSED,
                        t.c.after_id == delivery.after_id,
                    )
                    .values(
                        status=ACTIVE,
                        attempts=0,
                        failing_since=None,
                        next_attempt_at=None,
                        last_error=None,
                    )
                )
                if resumed.rowcount:
                    await conn.execute(
                        d.update().where(d.c.id == delivery.id).values(status=REPLAYED)
                    )
                    replayed.append(delivery)
        return replayed


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

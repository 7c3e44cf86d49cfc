"""``orderstack reconcile [--fix] [--json]``: prove the stock ledger from the database.

For every product (deleted ones too: a cancel still gives units back to them), the stock
must be what its ledger says: ``qty = sum(stock_adjustments.delta) - units held by the
lines of its confirmed reservations`` (the opening entry, reason ``created``, is one of the
adjustments; a hold, an order ``reserved``, has a confirmed reservation: its units are
held), and never below zero. Across the services (when the order tables are in the
same database, as in the embedded default): every confirmed reservation belongs to an
order the order service knows; every confirmed or reserved order has a confirmed
reservation holding exactly its lines (summed per product); a cancelled reservation's
order is cancelled or expired and, once settled, a cancelled or expired order's
reservation is cancelled; a failed order holds nothing; no order stays ``pending`` longer
than a window. The stock check is products/drift.py's ``ledger_query``, which the product
service also runs in the background for ``stock_drift_units`` on ``/metrics``.

Every check is one set-based statement (GROUP BY, anti-joins), whatever the number of
products. ``--fix`` repairs stock drift only, and only by a compensating entry in the
ledger (reason ``reconcile``, delta = the drift, so the stock itself is never
overwritten), written with the product's row locked (``SELECT … FOR UPDATE``, the drift
measured again under the lock) and its version bumped (``updated_at`` too), so the cache
repair refreshes it. Cross-service findings are reported, never fixed.

Exit status: 0 clean, 1 a finding (also when ``--fix`` fixed it: run again to see 0), 2
unusable (bad arguments, no database, tables missing)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderstack.config import Settings
from orderstack.orders.repository import order_lines, orders
from orderstack.products.drift import ledger_query
from orderstack.products.repository import (
    SqlProductRepository,
    products,
    reservation_lines,
    stock_adjustments,
    stock_reservations,
)
from orderstack.storage.errors import server_code
from orderstack.storage.types import UtcDateTime, utcnow

EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2

RECONCILE_REASON = "reconcile"
# The default pending window, in ORDER_PENDING_RESEND_MAX_SECONDS: an order still pending
# after this many of the sweeper's longest waits between resends is stuck.
PENDING_WINDOW_RESENDS = 3
# Products locked and fixed per transaction.
FIX_BATCH = 500

CONFIRMED, FAILED, CANCELLED = "confirmed", "failed", "cancelled"
# An order's statuses as its reservation sees them: a reserved order (a hold) holds its
# units as a confirmed one does; an expired one gave them back as a cancelled one did.
HOLDING = (CONFIRMED, "reserved")
GIVEN_BACK = (CANCELLED, "expired")

# What a run can find, in the order they are reported.
STOCK_DRIFT = "stock_drift"
NEGATIVE_STOCK = "negative_stock"
ORPHAN_RESERVATION = "orphan_reservation"
CONFIRMED_WITHOUT_RESERVATION = "confirmed_without_reservation"
LINES_DIFFER = "lines_differ"
RESERVATION_CANCELLED_ORDER_NOT = "reservation_cancelled_order_not"
ORDER_CANCELLED_RESERVATION_NOT = "order_cancelled_reservation_not"
FAILED_ORDER_HOLDING_STOCK = "failed_order_holding_stock"
STUCK_PENDING = "stuck_pending"
KINDS = (
    STOCK_DRIFT,
    NEGATIVE_STOCK,
    ORPHAN_RESERVATION,
    CONFIRMED_WITHOUT_RESERVATION,
    LINES_DIFFER,
    RESERVATION_CANCELLED_ORDER_NOT,
    ORDER_CANCELLED_RESERVATION_NOT,
    FAILED_ORDER_HOLDING_STOCK,
    STUCK_PENDING,
)


class Unusable(Exception):
    """The run cannot be done (no database, tables missing): exit 2, one line."""


# -- the pure part: what is found, what fixes it, how it is shown ------------------------


@dataclass(frozen=True, slots=True)
class ProductLedger:
    """One product's stock against its ledger."""

    product_id: int
    qty: int
    ledger: int  # sum of its stock_adjustments' deltas (the opening entry included)
    held: int  # units held by the lines of its confirmed reservations
    deleted: bool = False

    @property
    def expected(self) -> int:
        return self.ledger - self.held

    @property
    def drift(self) -> int:
        """Units in stock that the ledger does not explain (negative: missing)."""
        return self.qty - self.expected

    @property
    def compensation(self) -> int:
        """The delta of the ledger entry that makes ``qty = ledger - held`` hold again."""
        return self.drift


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    subject: str  # "product" or "order"
    id: int
    detail: str

    @property
    def names(self) -> str:
        return f"{self.subject} {self.id}"


@dataclass(frozen=True, slots=True)
class Fix:
    product_id: int
    delta: int
    qty: int  # the stock, unchanged (the entry's qty_after)
    version: int  # the product's version after the fix


@dataclass
class Report:
    products_checked: int
    orders_checked: int | None  # None: the order tables are not in this database
    pending_older_than: float
    # The order tables are there but this user may not read them (a product service's own
    # user, on PostgreSQL, which lists every table of the schema).
    orders_hidden: bool = False
    ledgers: list[ProductLedger] = field(default_factory=list)  # drifted or negative
    counts: dict[str, int] = field(default_factory=dict)  # per kind, exact
    examples: list[Finding] = field(default_factory=list)  # at most ``limit`` per kind
    fixed: list[Fix] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    @property
    def exit_status(self) -> int:
        return EXIT_CLEAN if self.clean else EXIT_FINDINGS


def default_pending_window(settings: Settings) -> float:
    return PENDING_WINDOW_RESENDS * settings.ORDER_PENDING_RESEND_MAX_SECONDS


def ledger_findings(ledgers: Iterable[ProductLedger]) -> list[Finding]:
    """The stock findings of these products: drift, negative stock."""
    found = []
    for p in ledgers:
        gone = " (deleted product)" if p.deleted else ""
        if p.drift:
            found.append(
                Finding(
                    STOCK_DRIFT,
                    "product",
                    p.product_id,
                    f"qty {p.qty}, ledger {p.ledger} - held {p.held} = {p.expected}: "
                    f"drift {p.drift:+d} units{gone}",
                )
            )
        if p.qty < 0:
            found.append(Finding(NEGATIVE_STOCK, "product", p.product_id, f"qty {p.qty}{gone}"))
    return found


def render_table(report: Report, limit: int) -> str:
    """What a run prints without ``--json``."""
    orders_part = (
        f"order tables {'not readable by this user' if report.orders_hidden else 'absent'}: "
        "product side only"
        if report.orders_checked is None
        else f"{report.orders_checked} orders"
    )
    lines = [
        f"checked {report.products_checked} products, {orders_part} "
        f"(pending window {report.pending_older_than:g} s)"
    ]
    if report.examples:
        lines.append("\t".join(("KIND", "SUBJECT", "DETAIL")))
        lines.extend("\t".join((f.kind, f.names, f.detail)) for f in report.examples)
    for kind in KINDS:
        count = report.counts.get(kind, 0)
        if count:
            shown = sum(1 for f in report.examples if f.kind == kind)
            more = f" ({count - shown} more not shown; --limit)" if count > shown else ""
            lines.append(f"{kind}: {count}{more}")
    surplus = sum(p.drift for p in report.ledgers if p.drift > 0)
    missing = sum(p.drift for p in report.ledgers if p.drift < 0)
    if surplus or missing:
        lines.append(f"stock drift in all: +{surplus} / {missing} units")
    for fix in report.fixed[:limit]:
        lines.append(
            f"fixed product {fix.product_id}: ledger entry {fix.delta:+d} "
            f"(reason {RECONCILE_REASON}), qty {fix.qty} kept, version {fix.version}"
        )
    if len(report.fixed) > limit:
        lines.append(f"fixed {len(report.fixed) - limit} more products")
    if report.clean:
        lines.append("clean")
    elif report.fixed:
        unfixed = sum(n for kind, n in report.counts.items() if kind != STOCK_DRIFT)
        lines.append(
            f"fixed the stock drift of {len(report.fixed)} products; "
            f"{unfixed} other findings are reported, not fixed"
        )
    return "\n".join(lines)


def render_json(report: Report, limit: int) -> str:
    return orjson.dumps(
        {
            "clean": report.clean,
            "products_checked": report.products_checked,
            "orders_checked": report.orders_checked,
            "order_tables": report.orders_checked is not None,
            "order_tables_unreadable": report.orders_hidden,
            "pending_older_than": report.pending_older_than,
            "counts": {kind: report.counts.get(kind, 0) for kind in KINDS},
            "stock": [
                {**asdict(p), "expected": p.expected, "drift_units": p.drift}
                for p in report.ledgers[:limit]
            ],
            "findings": [asdict(f) for f in report.examples],
            "fixed": [asdict(f) for f in report.fixed],
        }
    ).decode()


# -- the command ---------------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="check every product's stock against its ledger and reservations, and every "
        "reservation against its order (exit 0 clean, 1 findings)",
    )
    reconcile.add_argument(
        "--fix",
        action="store_true",
        help="write a compensating ledger entry (reason 'reconcile') for each stock drift",
    )
    reconcile.add_argument("--json", action="store_true", help="one JSON object")
    reconcile.add_argument(
        "--pending-older-than",
        type=_seconds,
        metavar="SECONDS",
        help="an order pending longer is stuck (default: "
        f"{PENDING_WINDOW_RESENDS} x ORDER_PENDING_RESEND_MAX_SECONDS)",
    )
    reconcile.add_argument(
        "--limit", type=_count, default=50, help="findings shown per kind (default 50)"
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``reconcile``; print the report; return the exit status."""
    from orderstack.storage.engine import create_engine

    url = settings.database_url
    if url.get_backend_name() == "sqlite" and not _is_file(url.database):
        # Opening it would create an empty database: there is nothing to check.
        print(f"orderstack reconcile: no SQLite database at {url.database!r}", file=sys.stderr)
        return EXIT_UNUSABLE
    window = args.pending_older_than
    if window is None:
        window = default_pending_window(settings)
    # A scan of every product takes longer than a request's statement may: no statement
    # bound, and no bound on waiting for its answer (Ctrl-C stops it); connecting and lock
    # waits (--fix) stay bounded.
    timeouts = replace(settings.db_timeouts, statement=None, read=None)
    engine = create_engine(url, pool_size=1, timeouts=timeouts)
    try:
        report = await reconcile(engine, pending_older_than=window, limit=args.limit, fix=args.fix)
    except Unusable as exc:
        print(f"orderstack reconcile: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
        # Unreachable, refused, a lock wait too long... The exception's text may hold the
        # URL: its type and the server's code say enough.
        code = server_code(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else None
        what = type(exc).__name__ + ("" if code is None else f", code {code}")
        print(
            f"orderstack reconcile: database error ({what}): check DATABASE_URL",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    finally:
        await engine.dispose()
    print(render_json(report, args.limit) if args.json else render_table(report, args.limit))
    return report.exit_status


def _is_file(path: str | None) -> bool:
    return bool(path) and path != ":memory:" and Path(path or "").is_file()


async def reconcile(
    engine: AsyncEngine,
    *,
    pending_older_than: float,
    limit: int = 50,
    fix: bool = False,
    now: datetime | None = None,
) -> Report:
    """Check (and with ``fix``, repair the stock drift of) the database behind ``engine``."""
    now = now or utcnow()
    async with engine.connect() as conn:
        tables = await conn.run_sync(
            lambda sync: set(sa.inspect(sync).get_table_names())  # type: ignore[no-any-return]
        )
        product_tables = {t.name for t in (products, stock_adjustments, stock_reservations)}
        missing = sorted((product_tables | {reservation_lines.name}) - tables)
        if missing:
            raise Unusable(
                f"the product tables {', '.join(missing)} are missing: run `orderstack migrate up`"
            )
        with_orders = {orders.name, order_lines.name} <= tables
        hidden = with_orders and not await _may_read_orders(conn)
        with_orders = with_orders and not hidden
        report = Report(
            products_checked=int(
                await conn.scalar(sa.select(sa.func.count()).select_from(products)) or 0
            ),
            orders_checked=(
                int(await conn.scalar(sa.select(sa.func.count()).select_from(orders)) or 0)
                if with_orders
                else None
            ),
            pending_older_than=pending_older_than,
            orders_hidden=hidden,
        )
        report.ledgers = await _ledgers(conn)
        stock = ledger_findings(report.ledgers)
        for kind in (STOCK_DRIFT, NEGATIVE_STOCK):
            of_kind = [f for f in stock if f.kind == kind]
            report.counts[kind] = len(of_kind)
            report.examples.extend(of_kind[:limit])
        if with_orders:
            cutoff = now - timedelta(seconds=pending_older_than)
            for kind, query in _order_checks(cutoff).items():
                # The examples first: counting them again is needed only past the limit.
                rows = (await conn.execute(query.order_by(sa.text("1")).limit(limit + 1))).all()
                count = len(rows)
                if count > limit:
                    counted = sa.select(sa.func.count()).select_from(query.subquery())
                    count = int(await conn.scalar(counted) or 0)
                report.counts[kind] = count
                report.examples.extend(await _describe(conn, kind, rows[:limit]))
    if fix and report.counts.get(STOCK_DRIFT):
        report.fixed = await _fix(engine, [p.product_id for p in report.ledgers if p.drift], now)
    return report


# -- the queries ---------------------------------------------------------------------------


async def _may_read_orders(conn: AsyncConnection) -> bool:
    """Whether this user may read the order tables it lists. MySQL, MariaDB and SQLite list
    only tables a user has some right on (or have no users); PostgreSQL lists every table
    of the schema, and reading one without the right would end the run (exit 2) instead of
    checking the product side: asked with has_table_privilege."""
    if conn.dialect.name != "postgresql":
        return True
    allowed = sa.select(
        sa.and_(
            *(
                sa.func.has_table_privilege(table.name, "SELECT", type_=sa.Boolean)
                for table in (orders, order_lines)
            )
        )
    )
    return bool(await conn.scalar(allowed))


async def _ledgers(conn: AsyncConnection, only: Sequence[int] | None = None) -> list[ProductLedger]:
    return [
        ProductLedger(
            int(row.id),
            int(row.qty),
            int(row.ledger),
            int(row.held),
            row.deleted_at is not None,
        )
        for row in await conn.execute(ledger_query(only))
    ]


def _lines_differ() -> sa.Select[Any]:
    """The orders confirmed on both sides whose lines are not their reservation's.

    A one-line order (most of them): its reservation's one line is its product and units,
    checked by lookups on the lines' primary key. An order of several lines: each order
    line counted +units, each reservation line -units, summed per (order, product) in one
    GROUP BY; any sum but 0 is a product not held as asked (lines are never of 0 units)."""
    r, rl = stock_reservations, reservation_lines
    both = sa.and_(r.c.outcome == CONFIRMED, orders.c.status.in_(HOLDING))
    confirmed = orders.join(r, r.c.order_id == orders.c.id)
    one_line = (
        sa.select(orders.c.id.label("order_id"))
        .select_from(confirmed)
        .where(
            both,
            orders.c.product_id.is_not(None),
            sa.or_(
                ~sa.exists().where(
                    rl.c.order_id == orders.c.id,
                    rl.c.product_id == orders.c.product_id,
                    rl.c.quantity == orders.c.quantity,
                ),
                sa.exists().where(
                    rl.c.order_id == orders.c.id, rl.c.product_id != orders.c.product_id
                ),
            ),
        )
    )
    asked = (
        sa.select(order_lines.c.order_id, order_lines.c.product_id, order_lines.c.quantity)
        .select_from(order_lines.join(confirmed, orders.c.id == order_lines.c.order_id))
        .where(both, orders.c.product_id.is_(None))
    )
    held = (
        sa.select(rl.c.order_id, rl.c.product_id, -rl.c.quantity)
        .select_from(rl.join(confirmed, orders.c.id == rl.c.order_id))
        .where(both, orders.c.product_id.is_(None))
    )
    lines = sa.union_all(asked, held).subquery("lines")
    several = (
        sa.select(lines.c.order_id)
        .group_by(lines.c.order_id, lines.c.product_id)
        .having(sa.func.sum(lines.c.quantity) != 0)
    )
    differ = sa.union(one_line, several).subquery("differ")
    return sa.select(differ.c.order_id)


def _order_checks(cutoff: datetime) -> dict[str, sa.Select[Any]]:
    """Each cross-service check: a query of the orders it finds (order id first)."""
    r = stock_reservations
    since = sa.literal(cutoff, UtcDateTime())
    order_known = sa.exists().where(orders.c.id == r.c.order_id)
    return {
        ORPHAN_RESERVATION: sa.select(r.c.order_id, r.c.quantity).where(
            r.c.outcome == CONFIRMED, ~order_known
        ),
        CONFIRMED_WITHOUT_RESERVATION: sa.select(orders.c.id, r.c.outcome, orders.c.status)
        .select_from(orders.outerjoin(r, r.c.order_id == orders.c.id))
        .where(orders.c.status.in_(HOLDING), sa.or_(r.c.order_id.is_(None), r.c.outcome == FAILED)),
        LINES_DIFFER: _lines_differ(),
        RESERVATION_CANCELLED_ORDER_NOT: sa.select(r.c.order_id, orders.c.status)
        .select_from(r.join(orders, orders.c.id == r.c.order_id))
        .where(r.c.outcome == CANCELLED, orders.c.status.not_in(GIVEN_BACK)),
        ORDER_CANCELLED_RESERVATION_NOT: sa.select(orders.c.id, r.c.outcome, orders.c.status)
        .select_from(orders.outerjoin(r, r.c.order_id == orders.c.id))
        .where(
            orders.c.status.in_(GIVEN_BACK),
            orders.c.updated_at < since,
            sa.or_(r.c.order_id.is_(None), r.c.outcome != CANCELLED),
        ),
        FAILED_ORDER_HOLDING_STOCK: sa.select(orders.c.id, r.c.quantity)
        .select_from(orders.join(r, r.c.order_id == orders.c.id))
        .where(orders.c.status == FAILED, r.c.outcome == CONFIRMED),
        STUCK_PENDING: sa.select(orders.c.id, orders.c.created_at, orders.c.resends).where(
            orders.c.status == "pending", orders.c.created_at < since
        ),
    }


async def _describe(conn: AsyncConnection, kind: str, rows: Sequence[Any]) -> list[Finding]:
    """The findings of one check, from the rows its query gave (order id first)."""
    if kind == LINES_DIFFER:
        ids = [int(row[0]) for row in rows]
        asked, held = await _lines_of(conn, ids)
        return [
            Finding(
                kind,
                "order",
                i,
                f"ordered {_units(asked.get(i, {}))}, reserved {_units(held.get(i, {}))}",
            )
            for i in ids
        ]
    details = {
        ORPHAN_RESERVATION: lambda row: f"confirmed reservation of {row[1]} units, no such order",
        CONFIRMED_WITHOUT_RESERVATION: lambda row: (
            f"order {row[2]}, reservation {row[1] or 'none'}"
        ),
        RESERVATION_CANCELLED_ORDER_NOT: lambda row: f"reservation cancelled, order {row[1]}",
        ORDER_CANCELLED_RESERVATION_NOT: lambda row: (
            f"order {row[2]}, reservation {row[1] or 'none'}"
        ),
        FAILED_ORDER_HOLDING_STOCK: lambda row: f"order failed, reservation holds {row[1]} units",
        STUCK_PENDING: lambda row: f"pending since {row[1].isoformat()}, {row[2]} resends",
    }
    return [Finding(kind, "order", int(row[0]), details[kind](row)) for row in rows]


def _units(lines: dict[int, int]) -> str:
    return "{" + ", ".join(f"product {p}: {u}" for p, u in sorted(lines.items())) + "}"


async def _lines_of(
    conn: AsyncConnection, order_ids: list[int]
) -> tuple[dict[int, dict[int, int]], dict[int, dict[int, int]]]:
    """The units per product these orders ask for, and their reservations' lines hold."""
    asked: dict[int, dict[int, int]] = {}
    held: dict[int, dict[int, int]] = {}
    if not order_ids:
        return asked, held
    for row in await conn.execute(
        sa.select(orders.c.id, orders.c.product_id, orders.c.quantity).where(
            orders.c.id.in_(order_ids), orders.c.product_id.is_not(None)
        )
    ):
        asked.setdefault(row.id, {})[row.product_id] = int(row.quantity)
    for row in await conn.execute(
        sa.select(order_lines.c.order_id, order_lines.c.product_id, order_lines.c.quantity).where(
            order_lines.c.order_id.in_(order_ids)
        )
    ):
        units = asked.setdefault(row.order_id, {})
        units[row.product_id] = units.get(row.product_id, 0) + int(row.quantity)
    for row in await conn.execute(
        sa.select(
            reservation_lines.c.order_id,
            reservation_lines.c.product_id,
            reservation_lines.c.quantity,
        ).where(reservation_lines.c.order_id.in_(order_ids))
    ):
        held.setdefault(row.order_id, {})[row.product_id] = int(row.quantity)
    return asked, held


# -- the fix -------------------------------------------------------------------------------


async def _fix(engine: AsyncEngine, product_ids: Sequence[int], now: datetime) -> list[Fix]:
    """A compensating ledger entry per drifted product, in transactions of FIX_BATCH
    products: their rows locked first (id order, as the product service locks them), the
    drift measured again under the lock (a product whose drift went meanwhile is left
    alone), the entries written, the versions bumped."""
    fixed: list[Fix] = []
    ids = sorted(set(product_ids))
    for start in range(0, len(ids), FIX_BATCH):
        chunk = ids[start : start + FIX_BATCH]
        async with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # SQLite has no FOR UPDATE: a first write takes the database's write lock,
                # so no other writer comes between the reads below and the entries.
                await conn.execute(
                    products.update()
                    .where(products.c.id.in_(chunk))
                    .values(version=products.c.version)
                )
            repository = SqlProductRepository(conn)
            locked = await repository.lock_many(chunk)
            drifted = [p for p in await _ledgers(conn, chunk) if p.drift and p.product_id in locked]
            if not drifted:
                continue
            await conn.execute(
                stock_adjustments.insert(),
                [
                    {
                        "product_id": p.product_id,
                        "delta": p.compensation,
                        "reason": RECONCILE_REASON,
                        "qty_after": p.qty,
                        "created_at": now,
                    }
                    for p in drifted
                ],
            )
            bumped = [
                replace(locked[p.product_id], version=locked[p.product_id].version + 1)
                for p in drifted
            ]
            await repository.save_stock(bumped, now)
            fixed.extend(
                Fix(p.product_id, p.compensation, p.qty, b.version)
                for p, b in zip(drifted, bumped, strict=True)
            )
    return fixed

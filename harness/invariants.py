"""SPEC.md's invariants, checked from the databases and the broker after a run.

Every stock check is per line: an order of one line keeps its product and units in its
``orders`` row, an order of several in ``order_lines`` (its row: product NULL, units in
all); the product service's ``stock_reservations`` has one row per order and
``reservation_lines`` the lines of each reservation it confirmed (one per product, summed).
The units a product's confirmed orders hold are the sum of those lines whose reservation
is ``confirmed``, on either side. A held order (issue 23) that is ``reserved`` holds its
units as a confirmed one does (its reservation is ``confirmed``); an ``expired`` one gave
them back as a cancelled one did (its reservation is ``cancelled``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from harness import rabbit
from harness import sandbox as servers
from orderstack.cache.port import CachedProduct
from orderstack.cache.redis import RedisProductCache
from orderstack.messaging.topology import ALL_QUEUES, ROUTED_EVENTS
from orderstack.orders.repository import inbox as orders_inbox
from orderstack.orders.repository import order_lines, orders
from orderstack.orders.repository import outbox as orders_outbox
from orderstack.products.repository import (
    SqlProductRepository,
    products,
    reservation_lines,
    stock_adjustments,
    stock_reservations,
)
from orderstack.products.repository import inbox as products_inbox
from orderstack.products.repository import outbox as products_outbox
from orderstack.storage.engine import create_engine

# (ready, unacknowledged) per queue of one vhost, as the broker lists them (a sandbox's
# queue_counts; a cluster sandbox lists them on its cluster).
Backlog = Callable[[], dict[str, tuple[int, int]]]


def harness_engine(database_url: str) -> AsyncEngine:
    """A one-connection engine on a sandbox's database (MariaDB or PostgreSQL, or an
    embedded run's SQLite file), for reading results."""
    url = make_url(database_url)
    drivers = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    driver = drivers.get(url.get_backend_name(), "mysql+asyncmy")
    return create_engine(url.set(drivername=driver), pool_size=1)


@dataclass
class Settlement:
    by_status: dict[str, int] = field(default_factory=dict)
    unsent_events: int = 0
    queue_depths: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return self.by_status.get("pending", 0)


QUEUE_NAMES = tuple(name for spec in ALL_QUEUES for name in (spec.name, spec.dead_letter_queue))


def machine_node_backlog(amqp_url: str) -> Backlog:
    """The listing of ``amqp_url``'s vhost, when it is on the machine's own node
    (rabbitmqctl reaches no other: pass a Backlog for a cluster's)."""
    url = urlsplit(amqp_url)
    if (url.hostname, url.port or 5672) != (servers.AMQP_HOST, servers.AMQP_PORT):
        raise ValueError(
            f"{url.hostname}:{url.port} is not the machine's node: pass a Backlog for it"
        )
    vhost = unquote(url.path[1:]) or "/"
    return lambda: rabbit.queue_counts(vhost)


async def ready_depths(amqp_url: str) -> dict[str, int]:
    """Messages ready per queue, by passive declares (cheap, one AMQP connection; a
    message a consumer holds unacknowledged is not counted: see queue_depths)."""
    connection = await aio_pika.connect(amqp_url, timeout=5)
    try:
        channel = await connection.channel()
        depths: dict[str, int] = {}
        for name in QUEUE_NAMES:
            queue = await channel.declare_queue(name, passive=True)
            depths[name] = queue.declaration_result.message_count or 0
        return depths
    finally:
        await connection.close()


async def wait_declared(amqp_url: str, timeout: float = 60.0) -> None:
    """Wait until every queue of the topology exists: a service answers HTTP before its
    consumers have declared their queues (a broker that is away must not keep it from
    serving), and a short step could otherwise end before they did. Raises TimeoutError
    naming what was still missing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await ready_depths(amqp_url)
            return
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"queues not declared after {timeout:g} s: {exc}") from exc
        await asyncio.sleep(0.2)


async def queue_depths(amqp_url: str, backlog: Backlog | None = None) -> dict[str, int]:
    """Messages per queue of the topology, ready and unacknowledged together: a message a
    consumer holds but has not acknowledged is still work left. The ready ones by passive
    declares (exact, whatever the queue type); the unacknowledged ones as the broker lists
    them (``backlog``; by default rabbitmqctl on the machine's node: exact for a classic
    queue, as of the last statistics tick for a quorum one). A queue of the topology that
    is missing raises."""
    ready = await ready_depths(amqp_url)
    listing = backlog or machine_node_backlog(amqp_url)
    counts = await asyncio.to_thread(listing)
    missing = [name for name in QUEUE_NAMES if name not in counts]
    if missing:
        raise RuntimeError(f"queues missing from {amqp_url}: {missing} (listed: {counts})")
    return {name: ready[name] + counts[name][1] for name in QUEUE_NAMES}


async def settlement(
    database_url: str, amqp_url: str | None, backlog: Backlog | None = None
) -> Settlement:
    engine = harness_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(orders.c.status, sa.func.count()).group_by(orders.c.status)
            )
            by_status = {status: int(n) for status, n in rows}
            unsent = 0
            for table in (orders_outbox, products_outbox):
                unsent += int(
                    await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(table)
                        .where(table.c.published_at.is_(None))
                    )
                    or 0
                )
    finally:
        await engine.dispose()
    depths = await queue_depths(amqp_url, backlog) if amqp_url else {}
    return Settlement(by_status, unsent, depths)


async def unconsumed_events(database_url: str) -> int:
    """Events written to an outbox, for a queue (a routed name), that the other service has
    not let in yet (not in its inbox): sent or not, they are not consumed. With the
    outboxes, what "quiet" means on a deployment whose bus has no queues to count (the
    embedded default's local bus)."""
    engine = harness_engine(database_url)
    try:
        async with engine.connect() as conn:
            total = 0
            for outbox, inbox in ((orders_outbox, products_inbox), (products_outbox, orders_inbox)):
                total += int(
                    await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(outbox)
                        .where(
                            outbox.c.event_type.in_(sorted(ROUTED_EVENTS)),
                            ~sa.exists().where(inbox.c.event_id == outbox.c.event_id),
                        )
                    )
                    or 0
                )
            return total
    finally:
        await engine.dispose()


async def wait_settled(
    database_url: str,
    amqp_url: str | None,
    timeout: float = 60.0,
    backlog: Backlog | None = None,
) -> tuple[Settlement, float]:
    """Poll until no order is pending, no event is unsent and the work queues are empty
    (no message ready or held unacknowledged). Returns the last observation and the
    seconds it took (or the timeout). The queues are counted (rabbitmqctl: an Erlang VM
    each time) only once the databases say settled, or at the timeout."""
    start = time.monotonic()
    while True:
        timed_out = time.monotonic() - start > timeout
        state = await settlement(database_url, None)
        if (state.pending == 0 and state.unsent_events == 0) or timed_out:
            if amqp_url:
                state = await settlement(database_url, amqp_url, backlog)
            work_left = sum(
                depth for name, depth in state.queue_depths.items() if not name.endswith(".dlq")
            )
            if (state.pending == 0 and state.unsent_events == 0 and work_left == 0) or timed_out:
                return state, time.monotonic() - start
        await asyncio.sleep(0.25)


def _chunks(ids: list[int], size: int = 5000) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


# The order statuses that hold the units their reservation took, those that gave them back,
# and every status an order settles in (in none of them: it has not settled).
HOLDING = ("confirmed", "reserved")
GIVEN_BACK = ("cancelled", "expired")
FINAL = (*HOLDING, "failed", *GIVEN_BACK)
# The outcome of an order's stock reservation, by the order's status.
RESERVATION_OF = {"reserved": "confirmed", "expired": "cancelled"}


def _confirmed_order_units() -> sa.Select[Any]:
    """Per product, the units the lines of confirmed (and reserved) orders ask for: a
    one-line order's from its row (``orders.product_id``, ``quantity``), an order of several
    lines' from ``order_lines``."""
    one_line = sa.select(
        orders.c.product_id.label("product_id"), orders.c.quantity.label("units")
    ).where(orders.c.product_id.is_not(None), orders.c.status.in_(HOLDING))
    several = (
        sa.select(
            order_lines.c.product_id.label("product_id"), order_lines.c.quantity.label("units")
        )
        .select_from(order_lines.join(orders, orders.c.id == order_lines.c.order_id))
        .where(orders.c.product_id.is_(None), orders.c.status.in_(HOLDING))
    )
    lines = sa.union_all(one_line, several).subquery()
    return sa.select(lines.c.product_id, sa.func.sum(lines.c.units)).group_by(lines.c.product_id)


def _held_units() -> sa.Select[Any]:
    """Per product, the units held by the lines of confirmed reservations."""
    return (
        sa.select(reservation_lines.c.product_id, sa.func.sum(reservation_lines.c.quantity))
        .select_from(
            reservation_lines.join(
                stock_reservations,
                stock_reservations.c.order_id == reservation_lines.c.order_id,
            )
        )
        .where(stock_reservations.c.outcome == "confirmed")
        .group_by(reservation_lines.c.product_id)
    )


async def stock_violations(
    database_url: str,
    initial_stock: Mapping[int, int],
    accepted_order_ids: Iterable[int] = (),
) -> list[str]:
    """What breaks the invariants: an accepted order not terminal or missing; per product
    (every line counted): the units held by the lines of confirmed reservations differ
    from the units taken (opening stock - stock now), or from the units the lines of
    confirmed orders ask for; negative stock.

    Refuses vacuous input: no product, or no accepted order, is itself a finding (a run
    that checked nothing must not pass)."""
    accepted = list(accepted_order_ids)
    violations: list[str] = []
    if not initial_stock:
        violations.append("nothing to check: no product given")
    if not accepted:
        violations.append("nothing to check: no accepted order given")
    if violations:
        return violations
    engine = harness_engine(database_url)
    try:
        async with engine.connect() as conn:
            for chunk in _chunks(accepted):
                rows = await conn.execute(
                    sa.select(orders.c.id, orders.c.status).where(orders.c.id.in_(chunk))
                )
                found = {r.id: r.status for r in rows}
                missing = [i for i in chunk if i not in found]
                if missing:
                    violations.append(f"{len(missing)} accepted orders missing, e.g. {missing[:5]}")
                stuck = [i for i, s in found.items() if s not in FINAL]
                if stuck:
                    violations.append(f"{len(stuck)} accepted orders not settled, e.g. {stuck[:5]}")
            ordered = {int(p): int(n or 0) for p, n in await conn.execute(_confirmed_order_units())}
            held = {int(p): int(n or 0) for p, n in await conn.execute(_held_units())}
            stock = {
                int(r.id): int(r.qty)
                for r in await conn.execute(
                    sa.select(products.c.id, products.c.qty).where(
                        products.c.id.in_(list(initial_stock))
                    )
                )
            }
    finally:
        await engine.dispose()
    for product_id, initial in initial_stock.items():
        qty = stock.get(product_id)
        if qty is None:
            violations.append(f"product {product_id} missing")
            continue
        confirmed, holding = ordered.get(product_id, 0), held.get(product_id, 0)
        if qty < 0:
            violations.append(f"product {product_id} has negative stock {qty}")
        if holding != initial - qty:
            violations.append(
                f"product {product_id}: confirmed reservations' lines hold {holding} units but "
                f"{initial - qty} units were taken ({initial} -> {qty})"
            )
        if confirmed != holding:
            violations.append(
                f"product {product_id}: confirmed orders' lines ask {confirmed} units, "
                f"confirmed reservations' lines hold {holding}"
            )
    return violations


async def line_violations(
    database_url: str,
    accepted_order_ids: Iterable[int],
    prices: Mapping[int, Decimal] | None = None,
) -> list[str]:
    """Order by order, line by line: every accepted order's lines (summed per product)
    against its reservation's. A confirmed order's reservation holds each of its lines'
    units, at a price (the catalog's, ``prices``, when given), and the order's total is
    the sum of those lines; a failed order took nothing (no reservation line) and did not
    fail ``price_changed`` (the load sends the catalog total, and no price changes during a
    run); a cancelled one holds nothing, and if it held lines, they were its own. Besides,
    each order is stored as its shape says: one line in its row and none in
    ``order_lines``, or several in ``order_lines`` whose units add up to its row's.

    Refuses vacuous input: no accepted order is itself a finding."""
    accepted = list(accepted_order_ids)
    if not accepted:
        return ["nothing to check: no accepted order given"]
    engine = harness_engine(database_url)
    rows: dict[int, Any] = {}
    asked: dict[int, list[tuple[int, int]]] = {}
    outcomes: dict[int, tuple[str, int]] = {}
    held: dict[int, dict[int, tuple[int, Decimal | None]]] = {}
    try:
        async with engine.connect() as conn:
            for chunk in _chunks(accepted):
                for stored in await conn.execute(
                    sa.select(
                        orders.c.id,
                        orders.c.product_id,
                        orders.c.quantity,
                        orders.c.status,
                        orders.c.total_price,
                        orders.c.failure,
                    ).where(orders.c.id.in_(chunk))
                ):
                    rows[stored.id] = stored
                for line in await conn.execute(
                    sa.select(
                        order_lines.c.order_id, order_lines.c.product_id, order_lines.c.quantity
                    )
                    .where(order_lines.c.order_id.in_(chunk))
                    .order_by(order_lines.c.order_id, order_lines.c.line_no)
                ):
                    asked.setdefault(line.order_id, []).append((line.product_id, line.quantity))
                for r in await conn.execute(
                    sa.select(
                        stock_reservations.c.order_id,
                        stock_reservations.c.outcome,
                        stock_reservations.c.quantity,
                    ).where(stock_reservations.c.order_id.in_(chunk))
                ):
                    outcomes[r.order_id] = (r.outcome, int(r.quantity))
                for kept in await conn.execute(
                    sa.select(
                        reservation_lines.c.order_id,
                        reservation_lines.c.product_id,
                        reservation_lines.c.quantity,
                        reservation_lines.c.unit_price,
                    ).where(reservation_lines.c.order_id.in_(chunk))
                ):
                    held.setdefault(kept.order_id, {})[kept.product_id] = (
                        int(kept.quantity),
                        kept.unit_price,
                    )
    finally:
        await engine.dispose()
    found: dict[str, list[str]] = {}

    def finding(kind: str, example: str) -> None:
        found.setdefault(kind, []).append(example)

    for order_id in accepted:
        row = rows.get(order_id)
        if row is None:
            continue  # the settlement check names it
        lines = asked.get(order_id, [])
        if row.product_id is not None:
            if lines:
                finding("one-line orders with lines in order_lines", f"{order_id}")
            lines = [(int(row.product_id), int(row.quantity))]
        elif len(lines) < 2:
            finding("orders of several lines without them in order_lines", f"{order_id}: {lines}")
        elif sum(q for _, q in lines) != row.quantity:
            finding(
                "orders whose row's units are not their lines' sum",
                f"{order_id}: row {row.quantity}, lines {lines}",
            )
        wanted: dict[int, int] = {}
        for product_id, units in lines:
            wanted[product_id] = wanted.get(product_id, 0) + units
        taken = held.get(order_id, {})
        units_taken = {pid: units for pid, (units, _) in taken.items()}
        outcome = outcomes.get(order_id)
        if row.status in HOLDING:
            if units_taken != wanted:
                finding(
                    "confirmed orders whose reservation lines are not their lines",
                    f"{order_id}: ordered {wanted}, reserved {units_taken}",
                )
            if outcome is not None and outcome[1] != sum(wanted.values()):
                finding(
                    "confirmed orders whose reservation's units are not their lines' sum",
                    f"{order_id}: {outcome[1]} against {sum(wanted.values())}",
                )
            unpriced = [pid for pid, (_, price) in taken.items() if price is None]
            if unpriced:
                finding("confirmed orders with unpriced lines", f"{order_id}: products {unpriced}")
            elif prices is not None and (
                wrong := [
                    f"product {pid} at {price}, catalog {prices[pid]}"
                    for pid, (_, price) in taken.items()
                    if pid in prices and price != prices[pid]
                ]
            ):
                finding(
                    "lines reserved at another price than the catalog's",
                    f"{order_id}: {', '.join(wrong)}",
                )
            elif taken and row.total_price is not None:
                total = sum(
                    (
                        Decimal(price) * units
                        for units, price in taken.values()
                        if price is not None
                    ),
                    Decimal(0),
                )
                if Decimal(row.total_price) != total:
                    finding(
                        "confirmed orders whose total is not their lines' catalog total",
                        f"{order_id}: total {row.total_price}, lines {total}",
                    )
        elif row.status == "failed":
            if taken:
                finding("failed orders holding reservation lines", f"{order_id}: {units_taken}")
            reason = json.loads(row.failure).get("reason") if row.failure else None
            if reason == "price_changed":
                finding(
                    "orders failed price_changed although the load sent the catalog total",
                    f"{order_id}",
                )
        elif row.status in GIVEN_BACK and taken and units_taken != wanted:
            finding(
                "cancelled orders whose reservation lines are not their lines",
                f"{order_id}: ordered {wanted}, reserved {units_taken}",
            )
    return [f"{len(examples)} {kind}, e.g. {examples[:5]}" for kind, examples in found.items()]


async def several_lines_confirmed(
    database_url: str, accepted_order_ids: Iterable[int]
) -> list[str]:
    """A finding unless some accepted order of several lines (``orders.product_id`` NULL)
    was confirmed: a run meant to exercise them must have had them take stock."""
    accepted = list(accepted_order_ids)
    if not accepted:
        return ["nothing to check: no accepted order given"]
    engine = harness_engine(database_url)
    confirmed = 0
    try:
        async with engine.connect() as conn:
            for chunk in _chunks(accepted):
                confirmed += int(
                    await conn.scalar(
                        sa.select(sa.func.count()).where(
                            orders.c.id.in_(chunk),
                            orders.c.product_id.is_(None),
                            orders.c.status == "confirmed",
                        )
                    )
                    or 0
                )
    finally:
        await engine.dispose()
    return [] if confirmed else ["nothing to check: no order of several lines was confirmed"]


async def order_figures(database_url: str, order_ids: Iterable[int] | None = None) -> str:
    """The stored orders by shape and status (one line, several lines; how many lines the
    confirmed ones had in all) and the failed ones' reasons, for a report."""
    engine = harness_engine(database_url)
    wanted = None if order_ids is None else list(order_ids)
    by: Counter[tuple[str, str]] = Counter()
    reasons: Counter[str] = Counter()
    lines_confirmed = 0
    try:
        async with engine.connect() as conn:
            query = sa.select(orders.c.id, orders.c.product_id, orders.c.status, orders.c.failure)
            chunks = [None] if wanted is None else list(_chunks(wanted))
            several: list[int] = []
            for chunk in chunks:
                for row in await conn.execute(
                    query if chunk is None else query.where(orders.c.id.in_(chunk))
                ):
                    shape = "one line" if row.product_id is not None else "several lines"
                    by[shape, row.status] += 1
                    if row.status == "failed":
                        reason = json.loads(row.failure).get("reason") if row.failure else None
                        reasons[reason or "none given"] += 1
                    if row.status == "confirmed":
                        if row.product_id is None:
                            several.append(row.id)
                        else:
                            lines_confirmed += 1
            for chunk in _chunks(several):
                lines_confirmed += int(
                    await conn.scalar(
                        sa.select(sa.func.count())
                        .select_from(order_lines)
                        .where(order_lines.c.order_id.in_(chunk))
                    )
                    or 0
                )
    finally:
        await engine.dispose()
    parts = []
    for shape in ("one line", "several lines"):
        counts = {status: n for (s, status), n in by.items() if s == shape}
        listed = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        parts.append(f"{shape}: {sum(counts.values())} ({listed or 'none'})")
    failed = ", ".join(f"{reason} x{n}" for reason, n in reasons.most_common()) or "none"
    return (
        f"stored by shape: {'; '.join(parts)}; lines of confirmed orders {lines_confirmed}; "
        f"failed by reason: {failed}"
    )


async def cancel_violations(
    database_url: str,
    accepted_order_ids: Iterable[int],
    answered_cancelled: Iterable[int] = (),
    answered_not_cancellable: Iterable[int] = (),
) -> list[str]:
    """What breaks the promises of cancellation: an order whose cancel was answered 200 that
    is not ``cancelled``, one refused with 409 that is not ``failed``, and an accepted order
    whose status is not its stock reservation's outcome (a cancelled order's reservation is
    cancelled and holds nothing, a confirmed one's holds its units).

    Refuses vacuous input: no accepted order, or no cancel answered at all, is itself a
    finding; so is an order whose status is not found."""
    violations: list[str] = []
    accepted = list(accepted_order_ids)
    expected = {i: "cancelled" for i in answered_cancelled}
    # 409: failed, or a hold that expired first.
    expected.update({i: "failed" for i in answered_not_cancellable})
    if not accepted:
        violations.append("nothing to check: no accepted order given")
    if not expected:
        violations.append("nothing to check: no cancel was answered 200 or 409")
    if violations:
        return violations
    engine = harness_engine(database_url)
    try:
        async with engine.connect() as conn:
            status: dict[int, str] = {}
            outcome: dict[int, str] = {}
            for start in range(0, len(accepted), 5000):
                chunk = accepted[start : start + 5000]
                rows = await conn.execute(
                    sa.select(orders.c.id, orders.c.status).where(orders.c.id.in_(chunk))
                )
                status.update({r.id: r.status for r in rows})
                rows = await conn.execute(
                    sa.select(stock_reservations.c.order_id, stock_reservations.c.outcome).where(
                        stock_reservations.c.order_id.in_(chunk)
                    )
                )
                outcome.update({r.order_id: r.outcome for r in rows})
    finally:
        await engine.dispose()
    wrong = [
        f"{i} is {status.get(i)}"
        for i, want in expected.items()
        if status.get(i) != want and not (want == "failed" and status.get(i) == "expired")
    ]
    if wrong:
        violations.append(
            f"{len(wrong)} orders not as their cancel was answered (200: cancelled, "
            f"409: failed), e.g. {wrong[:5]}"
        )
    missing = [i for i in accepted if i not in status]
    if missing:
        violations.append(f"{len(missing)} accepted orders missing, e.g. {missing[:5]}")
    apart = [
        f"{i}: order {status[i]}, reservation {outcome.get(i)}"
        for i in accepted
        if i in status and RESERVATION_OF.get(status[i], status[i]) != outcome.get(i)
    ]
    if apart:
        violations.append(
            f"{len(apart)} orders whose status is not their stock reservation's outcome, "
            f"e.g. {apart[:5]}"
        )
    return violations


async def ledger_violations_on(
    conn: AsyncConnection, product_ids: Iterable[int] | None = None
) -> list[str]:
    """The stock ledger's invariant, per product (all of them by default): units held by
    orders, confirmed or reserved (a hold) and not cancelled or expired (the
    ``reservation_lines`` of ``confirmed`` reservations, for that product: every line of
    every order counted) = sum of its stock
    adjustments (its opening entry, ``created`` or ``opening balance``, included) - its
    current qty; and qty >= 0.

    Refuses vacuous input: an empty ``product_ids``, a product asked for that is not
    there, or no product at all is itself a finding."""
    wanted = None if product_ids is None else list(product_ids)
    if wanted is not None and not wanted:
        return ["nothing to check: an empty list of products given"]
    confirmed = (
        sa.select(sa.func.coalesce(sa.func.sum(reservation_lines.c.quantity), 0))
        .select_from(
            reservation_lines.join(
                stock_reservations,
                stock_reservations.c.order_id == reservation_lines.c.order_id,
            )
        )
        .where(
            reservation_lines.c.product_id == products.c.id,
            stock_reservations.c.outcome == "confirmed",
        )
        .scalar_subquery()
    )
    adjusted = (
        sa.select(sa.func.coalesce(sa.func.sum(stock_adjustments.c.delta), 0))
        .where(stock_adjustments.c.product_id == products.c.id)
        .scalar_subquery()
    )
    entries = (
        sa.select(sa.func.count())
        .where(stock_adjustments.c.product_id == products.c.id)
        .scalar_subquery()
    )
    query = sa.select(
        products.c.id,
        products.c.qty,
        confirmed.label("confirmed"),
        adjusted.label("adjusted"),
        entries.label("entries"),
    ).order_by(products.c.id)
    if wanted is not None:
        query = query.where(products.c.id.in_(wanted))
    violations: list[str] = []
    rows = list(await conn.execute(query))
    if not rows:
        return ["nothing to check: no product found"]
    if wanted is not None:
        absent = sorted(set(wanted) - {row.id for row in rows})
        if absent:
            violations.append(f"products {absent} missing")
    for row in rows:
        confirmed_units, adjusted_units = int(row.confirmed), int(row.adjusted)
        if row.qty < 0:
            violations.append(f"product {row.id} has negative stock {row.qty}")
        if row.entries == 0:
            violations.append(f"product {row.id} has no entry in the stock ledger")
        if confirmed_units != adjusted_units - row.qty:
            violations.append(
                f"product {row.id}: confirmed reservations' lines hold {confirmed_units} "
                f"units but the ledger adds up to {adjusted_units} - qty {row.qty} = "
                f"{adjusted_units - row.qty}"
            )
    return violations


async def ledger_violations(
    database_url: str, product_ids: Iterable[int] | None = None
) -> list[str]:
    """ledger_violations_on, on a sandbox's database."""
    engine = harness_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await ledger_violations_on(conn, product_ids)
    finally:
        await engine.dispose()


def _cache_mismatch(
    product_id: int, version: int, qty: int, deleted: bool, cached: CachedProduct | None
) -> str | None:
    """What is wrong with ``product:{id}`` against its row, or None when it agrees."""
    row = f"version {version}, " + ("deleted" if deleted else f"qty {qty}")
    if cached is None:
        return f"product {product_id}: no cache entry (database: {row})"
    entry = f"version {cached.version}, " + ("tombstone" if cached.deleted else f"qty {cached.qty}")
    if cached.version != version or cached.deleted != deleted:
        return f"product {product_id}: cache has {entry}, database {row}"
    if not deleted and cached.qty != qty:
        return f"product {product_id}: cache has {entry}, database {row}"
    return None


async def cache_mismatches(database_url: str, redis_url: str) -> tuple[int, list[str]]:
    """Compare every product's ``product:{id}`` entry (read as the services read it, with
    RedisProductCache) with its row: same version and qty, a tombstone of the same version
    for a deleted row. Returns the number of products compared and the mismatches."""
    engine = harness_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = list(
                await conn.execute(
                    sa.select(
                        products.c.id, products.c.version, products.c.qty, products.c.deleted_at
                    ).order_by(products.c.id)
                )
            )
            epoch = await SqlProductRepository(conn).epoch()  # whose entries the services read
    finally:
        await engine.dispose()
    # A generous timeout: the services' 0.25 s would turn a slow answer into a "miss" here.
    cache = RedisProductCache(redis_url, timeout=5.0)
    try:
        entries = await cache.get_many([row.id for row in rows], epoch)
    finally:
        await cache.close()
    mismatches = [
        problem
        for row, cached in zip(rows, entries, strict=True)
        if (
            problem := _cache_mismatch(
                row.id, int(row.version), int(row.qty), row.deleted_at is not None, cached
            )
        )
    ]
    return len(rows), mismatches


async def wait_cache_consistent(
    database_url: str, redis_url: str, timeout: float
) -> tuple[int, list[str], float]:
    """Poll cache_mismatches until there are none or ``timeout`` seconds have passed (the
    cache repair runs every CACHE_REPAIR_INTERVAL_SECONDS: give it about two). Returns the
    products compared, the last mismatches and the seconds it took."""
    start = time.monotonic()
    while True:
        compared, mismatches = await cache_mismatches(database_url, redis_url)
        elapsed = time.monotonic() - start
        if not mismatches or elapsed > timeout:
            return compared, mismatches, elapsed
        await asyncio.sleep(0.25)

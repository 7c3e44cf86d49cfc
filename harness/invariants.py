"""SPEC.md's invariants, checked from the databases and the broker after a run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
from orderstack.orders.repository import orders
from orderstack.orders.repository import outbox as orders_outbox
from orderstack.products.repository import (
    SqlProductRepository,
    products,
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


async def stock_violations(
    database_url: str,
    initial_stock: Mapping[int, int],
    accepted_order_ids: Iterable[int] = (),
) -> list[str]:
    """What breaks the invariants: an accepted order not terminal or missing, a product
    whose confirmed units differ from its stock taken, negative stock, an order answered
    twice in the ledger.

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
            for start in range(0, len(accepted), 5000):
                chunk = accepted[start : start + 5000]
                rows = await conn.execute(
                    sa.select(orders.c.id, orders.c.status).where(orders.c.id.in_(chunk))
                )
                found = {r.id: r.status for r in rows}
                missing = [i for i in chunk if i not in found]
                if missing:
                    violations.append(f"{len(missing)} accepted orders missing, e.g. {missing[:5]}")
                stuck = [
                    i for i, s in found.items() if s not in ("confirmed", "failed", "cancelled")
                ]
                if stuck:
                    violations.append(f"{len(stuck)} accepted orders not settled, e.g. {stuck[:5]}")
            for product_id, initial in initial_stock.items():
                qty = await conn.scalar(
                    sa.select(products.c.qty).where(products.c.id == product_id)
                )
                confirmed = int(
                    await conn.scalar(
                        sa.select(sa.func.coalesce(sa.func.sum(orders.c.quantity), 0)).where(
                            orders.c.product_id == product_id, orders.c.status == "confirmed"
                        )
                    )
                    or 0
                )
                ledger = int(
                    await conn.scalar(
                        sa.select(
                            sa.func.coalesce(sa.func.sum(stock_reservations.c.quantity), 0)
                        ).where(
                            stock_reservations.c.product_id == product_id,
                            stock_reservations.c.outcome == "confirmed",
                        )
                    )
                    or 0
                )
                if qty is None:
                    violations.append(f"product {product_id} missing")
                    continue
                if qty < 0:
                    violations.append(f"product {product_id} has negative stock {qty}")
                if confirmed != initial - qty:
                    violations.append(
                        f"product {product_id}: {confirmed} units confirmed but "
                        f"{initial - qty} units taken ({initial} -> {qty})"
                    )
                if ledger != confirmed:
                    violations.append(
                        f"product {product_id}: ledger has {ledger} confirmed, orders {confirmed}"
                    )
    finally:
        await engine.dispose()
    return violations


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
    wrong = [f"{i} is {status.get(i)}" for i, want in expected.items() if status.get(i) != want]
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
        if i in status and status[i] != outcome.get(i)
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
    """The stock ledger's invariant, per product (all of them by default): units confirmed
    to orders and not cancelled (``stock_reservations`` rows ``confirmed``, their
    ``quantity``) = sum of its stock adjustments (its opening entry, ``created`` or
    ``opening balance``, included) - its current qty; and qty >= 0.

    Refuses vacuous input: an empty ``product_ids``, a product asked for that is not
    there, or no product at all is itself a finding."""
    wanted = None if product_ids is None else list(product_ids)
    if wanted is not None and not wanted:
        return ["nothing to check: an empty list of products given"]
    confirmed = (
        sa.select(sa.func.coalesce(sa.func.sum(stock_reservations.c.quantity), 0))
        .where(
            stock_reservations.c.product_id == products.c.id,
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
                f"product {row.id}: {confirmed_units} units confirmed to orders but the "
                f"ledger adds up to {adjusted_units} - qty {row.qty} = {adjusted_units - row.qty}"
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

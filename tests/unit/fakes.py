"""In-memory fakes of the ports the use cases and the consumer depend on.

Each fake keeps the semantics of the SQL adapter it stands for (orders/repository.py,
products/repository.py, messaging/outbox.py, messaging/inbox.py, messaging/uow.py), so a test
that passes here says something about the service code, not about the fake.

A fake database holds a service's committed state. Its units of work run one at a time
(an asyncio lock stands in for the row locks) and each one works on the shared state,
restoring the snapshot taken at its start (or at its last commit) when it is left without
a commit: what was not committed is gone, as after a rollback.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Self

from sqlalchemy.exc import IntegrityError

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.cache.port import CachedProduct, CacheMarker
from orderstack.messaging.envelope import Event, encode, origin_headers
from orderstack.orders.domain import (
    CatalogUnavailable,
    Failure,
    NewOrder,
    Order,
    OrderLine,
    OrderStatus,
)
from orderstack.orders.status_events import StatusEvent
from orderstack.orders.webhooks import ACTIVE, DEAD, PAUSED, REPLAYED, Delivery, Webhook
from orderstack.products.caching import cache_entry, tombstone
from orderstack.products.domain import (
    MAX_QTY,
    NewProduct,
    Product,
    ProductChanges,
    Reservation,
    ReservationOutcome,
    StockAdjustment,
)


def integrity_error(what: str) -> IntegrityError:
    return IntegrityError(what, {}, Exception(what))


START = datetime(2025, 9, 20, 10, 30, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


# -- orders ------------------------------------------------------------------------------


class FakeOrderRepository:
    """Same methods and semantics as SqlOrderRepository."""

    def __init__(self) -> None:
        self.rows: dict[int, Order] = {}
        self.request_ids: dict[str, int] = {}
        self.fingerprints: dict[int, str | None] = {}
        self.updated_at: dict[int, datetime] = {}
        self.resends: dict[int, int] = {}  # absent: 0
        self.resend_at: dict[int, datetime] = {}  # absent: NULL
        # Like an AUTO_INCREMENT counter, ids are not given back on rollback.
        self._next_id = 1

    async def add_many(self, new: Sequence[NewOrder], now: datetime) -> list[Order]:
        """Raises IntegrityError when a ``request_id`` was used (the unique index); the
        unit of work then discards the whole statement, as a rollback would."""
        stored = []
        for n in new:
            if n.request_id is not None and n.request_id in self.request_ids:
                raise integrity_error(f"duplicate request_id {n.request_id!r}")
            order = Order(
                self._next_id,
                n.items,
                n.total_price,
                OrderStatus.PENDING,
                now,
                n.agreed_total,
                customer_id=n.customer_id,
                hold_seconds=n.hold_seconds,
            )
            self._next_id += 1
            self.rows[order.id] = order
            self.updated_at[order.id] = now
            if n.request_id is not None:
                self.request_ids[n.request_id] = order.id
                self.fingerprints[order.id] = n.request_fingerprint
            stored.append(order)
        return stored

    async def get(self, order_id: int) -> Order | None:
        return self.rows.get(order_id)

    async def lock(self, order_id: int) -> Order | None:
        """Units of work run one at a time here: ``get``."""
        return self.rows.get(order_id)

    async def by_request_id(self, request_id: str) -> tuple[Order, str | None] | None:
        order_id = self.request_ids.get(request_id)  # a dict: keys compare exactly
        if order_id is None:
            return None
        return self.rows[order_id], self.fingerprints.get(order_id)

    async def find(
        self,
        *,
        status: OrderStatus | None = None,
        product_id: int | None = None,
        customer_id: str | None = None,
        after: int = 0,
        limit: int,
    ) -> list[Order]:
        found = sorted(
            (
                o
                for o in self.rows.values()
                if o.id > after
                and (status is None or o.status is status)
                and (customer_id is None or o.customer_id == customer_id)
                and (product_id is None or any(li.product_id == product_id for li in o.items))
            ),
            key=_id,
        )
        return found[:limit]

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
        """The database's clock is ``now`` here (the service's clock)."""
        moved = 0
        for order_id in order_ids:
            order = self.rows.get(order_id)
            if order is None or order.status not in allowed_from:
                continue
            if held is not None and (order.hold_seconds is not None) != held:
                continue
            if expiry is not None:
                if order.expires_at is None:
                    continue
                if (order.expires_at > now) != (expiry == "unexpired"):
                    continue
            changed = replace(order, status=status)
            if expires_at is not None:
                changed = replace(changed, expires_at=expires_at)
            if payment_reference is not None:
                changed = replace(changed, payment_reference=payment_reference)
            self.rows[order_id] = changed
            self.updated_at[order_id] = now
            moved += 1
        return moved

    async def database_now(self, fallback: datetime) -> datetime:
        return fallback

    async def holds(self, order_ids: Sequence[int]) -> dict[int, int]:
        found = (self.rows.get(order_id) for order_id in order_ids)
        return {
            o.id: o.hold_seconds
            for o in found
            if o is not None and o.status is OrderStatus.PENDING and o.hold_seconds is not None
        }

    async def lock_expired(self, limit: int, now: datetime) -> list[Order]:
        """Units of work run one at a time here, which stands in for SKIP LOCKED."""
        due = sorted(
            (
                o
                for o in self.rows.values()
                if o.status is OrderStatus.RESERVED
                and o.expires_at is not None
                and o.expires_at <= now
            ),
            key=lambda o: (o.expires_at, o.id),
        )
        return due[:limit]

    async def record_prices(
        self, priced: Mapping[int, tuple[Sequence[OrderLine], Decimal | None]]
    ) -> None:
        for order_id, (lines, total) in priced.items():
            order = self.rows.get(order_id)
            if order is None or order.status not in _TAKEN:
                continue
            prices = {line.product_id: line.unit_price for line in lines}
            items = tuple(
                line
                if line.unit_price is not None
                else replace(line, unit_price=prices.get(line.product_id))
                for line in order.items
            )
            total_price = order.total_price if order.total_price is not None else total
            self.rows[order_id] = replace(order, items=items, total_price=total_price)

    async def record_failures(self, failures: Mapping[int, Failure]) -> None:
        for order_id, failure in failures.items():
            order = self.rows.get(order_id)
            if order is not None and order.status is OrderStatus.FAILED and order.failure is None:
                self.rows[order_id] = replace(order, failure=failure)

    async def claim_stale_pending(
        self,
        updated_before: datetime,
        limit: int,
        now: datetime,
        next_resend_at: Callable[[int], datetime] | None = None,
    ) -> list[Order]:
        """Units of work run one at a time here, which stands in for SKIP LOCKED."""
        pending = [o for o in self.rows.values() if o.status is OrderStatus.PENDING]
        never = sorted(
            (
                o
                for o in pending
                if o.id not in self.resend_at and self.updated_at[o.id] < updated_before
            ),
            key=lambda o: (self.updated_at[o.id], o.id),
        )
        due = sorted(
            (o for o in pending if o.id in self.resend_at and self.resend_at[o.id] <= now),
            key=lambda o: (self.resend_at[o.id], o.id),
        )
        stale = (never + due)[:limit]
        for order in stale:
            self.updated_at[order.id] = now
            self.resends[order.id] = done = self.resends.get(order.id, 0) + 1
            self.resend_at.pop(order.id, None)
            if next_resend_at is not None:
                self.resend_at[order.id] = next_resend_at(done)
        return stale

    def snapshot(self) -> Any:
        return (
            dict(self.rows),
            dict(self.request_ids),
            dict(self.fingerprints),
            dict(self.updated_at),
            dict(self.resends),
            dict(self.resend_at),
        )

    def restore(self, state: Any) -> None:
        rows, request_ids, fingerprints, updated_at, resends, resend_at = state
        self.rows, self.request_ids = dict(rows), dict(request_ids)
        self.fingerprints, self.updated_at = dict(fingerprints), dict(updated_at)
        self.resends, self.resend_at = dict(resends), dict(resend_at)


_TAKEN = (
    OrderStatus.CONFIRMED,
    OrderStatus.CANCELLED,
    OrderStatus.RESERVED,
    OrderStatus.EXPIRED,
)


def _id(item: Order | Product) -> int:
    return item.id


# -- products ----------------------------------------------------------------------------


class FakeProductRepository:
    """Same methods and semantics as SqlProductRepository: dicts for the tables, versions
    bumped on every change, soft delete, the CHECK that qty is never negative, a
    reservation ledger and a stock adjustments ledger. It holds no stock rule: those are
    in products/domain.py, which the service applies to what this returns. ``epoch`` is
    the database's (``products_epoch``); a test replaces it as a reset would."""

    def __init__(self, epoch: str = "") -> None:
        self.database_epoch = epoch
        self.rows: dict[int, Product] = {}
        self.deleted_at: dict[int, datetime] = {}
        self.reservations: dict[int, Reservation] = {}  # the stock_reservations ledger
        self.cancelled_at: dict[int, datetime] = {}
        self.adjustments: list[StockAdjustment] = []
        self._next_id = self._next_adjustment_id = 1

    def _alive(self, product_id: int) -> Product | None:
        if product_id in self.deleted_at:
            return None
        return self.rows.get(product_id)

    async def epoch(self) -> str:
        return self.database_epoch

    async def changed_since(
        self, since: datetime | None, after_id: int, limit: int
    ) -> list[CachedProduct]:
        """One page of the products changed at or after ``since`` (None: all), as cache
        entries (unstamped) and tombstones, by id: what the cache repair reads."""
        page = sorted(
            (
                p
                for p in self.rows.values()
                if p.id > after_id and (since is None or p.updated_at >= since)
            ),
            key=_id,
        )[:limit]
        return [
            tombstone(p.id, p.version) if p.id in self.deleted_at else cache_entry(p) for p in page
        ]

    async def add_many(self, new: Sequence[NewProduct], now: datetime) -> list[Product]:
        if any(n.qty < 0 for n in new):
            raise integrity_error("ck_products_qty_not_negative")
        added = []
        for n in new:
            product = Product(self._next_id, n.name, n.price, n.qty, now, now, 1)
            self._next_id += 1
            self.rows[product.id] = product
            added.append(product)
        return added

    async def record_openings(self, opened: Sequence[Product], reason: str, now: datetime) -> None:
        for product in opened:
            await self.record_adjustment(product.id, product.qty, reason, product.qty, now)

    async def get(self, product_id: int) -> Product | None:
        return self._alive(product_id)

    async def page(self, limit: int, offset: int) -> tuple[list[Product], int]:
        alive = sorted((p for p in self.rows.values() if p.id not in self.deleted_at), key=_id)
        return alive[offset : offset + limit], len(alive)

    async def lock(self, product_id: int) -> Product | None:
        return self._alive(product_id)  # the unit of work's lock already serialises

    async def update(
        self,
        product_id: int,
        changes: ProductChanges,
        now: datetime,
        expected_versions: Collection[int] | None = None,
    ) -> bool:
        product = self._alive(product_id)
        if product is None:
            return False
        if expected_versions is not None and product.version not in expected_versions:
            return False
        if changes.get("qty", 0) < 0:
            raise integrity_error("ck_products_qty_not_negative")
        self.rows[product_id] = replace(
            product, **changes, updated_at=now, version=product.version + 1
        )
        return True

    async def add_to_qty(self, product_id: int, delta: int, now: datetime) -> bool:
        product = self._alive(product_id)
        if product is None or product.qty + delta < 0:
            return False
        self.rows[product_id] = replace(
            product, qty=product.qty + delta, updated_at=now, version=product.version + 1
        )
        return True

    async def record_adjustment(
        self, product_id: int, delta: int, reason: str, qty_after: int, now: datetime
    ) -> StockAdjustment:
        entry_id, self._next_adjustment_id = self._next_adjustment_id, self._next_adjustment_id + 1
        entry = StockAdjustment(entry_id, product_id, delta, reason, qty_after, now)
        self.adjustments.append(entry)
        return entry

    async def delete(self, product_id: int, now: datetime) -> int | None:
        product = self._alive(product_id)
        if product is None:
            return None
        self.deleted_at[product_id] = now
        self.rows[product_id] = replace(product, updated_at=now, version=product.version + 1)
        return product.version + 1

    async def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]:
        # The unit of work's lock already serialises, as the row locks do. Deleted
        # products are included, marked, as the SQL adapter does.
        return {
            pid: replace(self.rows[pid], deleted=pid in self.deleted_at)
            for pid in sorted(product_ids)
            if pid in self.rows
        }

    async def save_stock(self, changed: Sequence[Product], now: datetime) -> None:
        for product in changed:
            if product.qty < 0:
                raise integrity_error("ck_products_qty_not_negative")
            if product.qty > MAX_QTY:
                raise integrity_error("products.qty out of range")
            self.rows[product.id] = replace(product, deleted=False)

    async def reservations_of(self, order_ids: Sequence[int]) -> dict[int, Reservation]:
        return {i: self.reservations[i] for i in order_ids if i in self.reservations}

    async def record_reservations(self, new: Sequence[Reservation], now: datetime) -> None:
        for reservation in new:
            if reservation.order_id in self.reservations:
                raise integrity_error(
                    f"duplicate stock_reservations.order_id {reservation.order_id}"
                )
            self.reservations[reservation.order_id] = reservation
            if reservation.outcome is ReservationOutcome.CANCELLED:
                self.cancelled_at[reservation.order_id] = now

    async def held_units(self, product_id: int) -> int:
        return self.confirmed_units(product_id)

    async def mark_cancelled(self, order_ids: Sequence[int], now: datetime) -> int:
        changed = 0
        for order_id in order_ids:
            found = self.reservations.get(order_id)
            if found is None or found.outcome is ReservationOutcome.CANCELLED:
                continue
            self.reservations[order_id] = replace(found, outcome=ReservationOutcome.CANCELLED)
            self.cancelled_at[order_id] = now
            changed += 1
        return changed

    def confirmed_units(self, product_id: int) -> int:
        """Units the ledger says confirmed orders hold of the product (cancelled ones gave
        theirs back)."""
        return sum(r.held.get(product_id, 0) for r in self.reservations.values())

    def adjusted_units(self, product_id: int) -> int:
        """Sum of the product's entries in the stock adjustments ledger."""
        return sum(a.delta for a in self.adjustments if a.product_id == product_id)

    def snapshot(self) -> Any:
        return (
            dict(self.rows),
            dict(self.deleted_at),
            dict(self.reservations),
            dict(self.cancelled_at),
            list(self.adjustments),
        )

    def restore(self, state: Any) -> None:
        rows, deleted_at, reservations, cancelled_at, adjustments = state
        self.rows, self.deleted_at, self.reservations = (
            dict(rows),
            dict(deleted_at),
            dict(reservations),
        )
        self.cancelled_at = dict(cancelled_at)
        self.adjustments = list(adjustments)


# -- outbox and inbox --------------------------------------------------------------------


class FakeOutbox:
    """Records the events written in committed transactions (OutboxWriter's ``add``)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.added = 0

    async def add(self, events: Sequence[Event]) -> None:
        self.events.extend(events)
        self.added += len(events)

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]

    def snapshot(self) -> Any:
        return (list(self.events), self.added)

    def restore(self, state: Any) -> None:
        events, self.added = state
        self.events = list(events)


class FakeInbox:
    """Inbox.claim: records the events not seen before and returns them, in order, once each."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}  # event id -> event name

    async def claim(self, events: Sequence[Event]) -> list[Event]:
        unique: dict[str, Event] = {}
        for event in events:
            unique.setdefault(event.id, event)
        fresh = [e for e in unique.values() if e.id not in self.seen]
        for event in fresh:
            self.seen[event.id] = event.name
        return fresh

    def snapshot(self) -> Any:
        return dict(self.seen)

    def restore(self, state: Any) -> None:
        self.seen = dict(state)


# -- units of work -----------------------------------------------------------------------

AfterCommit = Callable[[], Awaitable[None]]


class _FakeDatabase:
    """A service's committed state and the switches tests use to make commits fail."""

    def __init__(self, outbox: FakeOutbox | None = None, inbox: FakeInbox | None = None) -> None:
        self.outbox = outbox or FakeOutbox()
        self.inbox = inbox or FakeInbox()
        self.lock = asyncio.Lock()
        self.commits = 0
        # Raised, one per attempt, by the next commits (a database blip, a broken write).
        self.commit_failures: list[Exception] = []
        self.failed_callbacks: list[Exception] = []

    def _parts(self) -> list[Any]:
        return [self.outbox, self.inbox]

    def snapshot(self) -> list[Any]:
        return [part.snapshot() for part in self._parts()]

    def restore(self, state: list[Any]) -> None:
        for part, saved in zip(self._parts(), state, strict=True):
            part.restore(saved)


class FakeUnitOfWork:
    """``async with uow: ...; await uow.commit()``; leaving without commit discards changes.
    After-commit callbacks run after the commit, in order; their failures are recorded,
    not raised (the transaction is already durable), as in SqlUnitOfWork."""

    def __init__(self, db: _FakeDatabase) -> None:
        self._db = db
        self.outbox, self.inbox = db.outbox, db.inbox
        self._after_commit: list[AfterCommit] = []
        self._saved: list[Any] = []

    async def __aenter__(self) -> Self:
        await self._db.lock.acquire()
        self._saved = self._db.snapshot()
        return self

    def after_commit(self, callback: AfterCommit) -> None:
        self._after_commit.append(callback)

    async def commit(self) -> None:
        if self._db.commit_failures:
            raise self._db.commit_failures.pop(0)
        self._saved = self._db.snapshot()
        self._db.commits += 1
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            try:
                await callback()
            except Exception as exc:
                self._db.failed_callbacks.append(exc)

    async def __aexit__(self, *exc: object) -> None:
        try:
            self._db.restore(self._saved)
        finally:
            self._after_commit.clear()
            self._db.lock.release()


class FakeOrderDatabase(_FakeDatabase):
    def __init__(self, orders: FakeOrderRepository | None = None, **parts: Any) -> None:
        super().__init__(**parts)
        self.orders = orders or FakeOrderRepository()

    def _parts(self) -> list[Any]:
        return [self.orders, *super()._parts()]

    def unit_of_work(self) -> FakeOrderUnitOfWork:
        return FakeOrderUnitOfWork(self)


class FakeOrderUnitOfWork(FakeUnitOfWork):
    def __init__(self, db: FakeOrderDatabase) -> None:
        super().__init__(db)
        self.orders = db.orders


class FakeProductDatabase(_FakeDatabase):
    def __init__(self, products: FakeProductRepository | None = None, **parts: Any) -> None:
        super().__init__(**parts)
        self.products = products or FakeProductRepository()

    def _parts(self) -> list[Any]:
        return [self.products, *super()._parts()]

    def unit_of_work(self) -> FakeProductUnitOfWork:
        return FakeProductUnitOfWork(self)


class FakeProductUnitOfWork(FakeUnitOfWork):
    def __init__(self, db: FakeProductDatabase) -> None:
        super().__init__(db)
        self.products = db.products


# -- product cache -----------------------------------------------------------------------


class RestartableCache(InProcessProductCache):
    """The in-process cache, plus what a cache server does that it cannot: ``snapshot``
    (an RDB save) and ``restart`` from one (entries and marker as they were then, a new
    server id), and being unreachable (``down``: no server id, reads miss, writes lost)."""

    def __init__(self, ttl_seconds: float = 300) -> None:
        super().__init__(ttl_seconds)
        self.down = False
        self.markers: list[CacheMarker] = []  # every marker written, in order

    def snapshot(self) -> Any:
        return dict(self._entries), self._marker

    def restart(self, snapshot: Any) -> None:
        entries, marker = snapshot
        self._entries, self._marker = dict(entries), marker
        self._server = uuid.uuid4().hex

    async def get_many(
        self, product_ids: Sequence[int], epoch: str = ""
    ) -> list[CachedProduct | None]:
        if self.down:
            return [None] * len(product_ids)
        return await super().get_many(product_ids, epoch)

    async def put(self, *products: CachedProduct, replace_only: bool = False) -> None:
        if not self.down:
            await super().put(*products, replace_only=replace_only)

    async def server_id(self) -> str | None:
        return None if self.down else await super().server_id()

    async def marker(self) -> CacheMarker | None:
        return None if self.down else await super().marker()

    async def set_marker(self, marker: CacheMarker) -> None:
        if not self.down:
            self.markers.append(marker)
            await super().set_marker(marker)


# -- product lookup ----------------------------------------------------------------------


class FakeCatalog:
    """The order service's ProductCatalog: a set of known product ids and an outage switch."""

    def __init__(self, known: Iterable[int] = ()) -> None:
        self.known = set(known)
        self.unavailable = False
        self.calls = 0

    async def product_exists(self, product_id: int) -> bool:
        self.calls += 1
        await asyncio.sleep(0)  # a real lookup suspends: let concurrent callers interleave
        if self.unavailable:
            raise CatalogUnavailable("product service down (fake)")
        return product_id in self.known

    async def warm(self, product_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        cached: list[int] = []
        not_found: list[int] = []
        for product_id in dict.fromkeys(product_ids):
            (cached if await self.product_exists(product_id) else not_found).append(product_id)
        return cached, not_found

    async def is_up(self) -> bool:
        return not self.unavailable

    async def close(self) -> None:
        return None


# -- deliveries --------------------------------------------------------------------------


@dataclass
class FakeDelivery:
    """One message handed to a consumer; records how it was settled (exactly once)."""

    body: bytes
    message_id: str | None
    routing_key: str | None
    outcome: str | None = None
    reason: str | None = None  # the one given to dead_letter
    on_settle: Callable[[str], None] | None = None
    headers: dict[str, str] | None = None

    def _settle(self, outcome: str) -> None:
        if self.outcome is not None:
            raise AssertionError(f"delivery settled twice: {self.outcome} then {outcome}")
        self.outcome = outcome
        if self.on_settle is not None:
            self.on_settle(outcome)

    async def ack(self) -> None:
        self._settle("ack")

    async def dead_letter(self, reason: str) -> None:
        self.reason = reason
        self._settle("dead_letter")

    @classmethod
    def of(cls, event: Event, *, message_id: str | None = None) -> FakeDelivery:
        """The delivery the broker hands over for an event our relay published."""
        return cls(
            encode(event),
            message_id or event.id,
            event.name,
            headers=origin_headers(event) or None,
        )


class FakeStatusEventLog:
    """``order_status_events`` in memory (orders/repository.py ``SqlStatusEventLog``), with
    what the SQL one shows of ids: ``take()`` reserves the next id as an INSERT does,
    ``commit()`` makes a taken id visible, and an id taken but never committed stays a
    gap (a rolled-back transaction); ``catch_ups`` counts the reads bounded by ``upto``
    (a stream's own, from further back than the hub's memory)."""

    def __init__(self) -> None:
        self._next = 1
        self.rows: dict[int, StatusEvent] = {}
        self.catch_ups = 0

    def take(self, order_id: int, status: str, customer_id: str | None = None) -> StatusEvent:
        event = StatusEvent(self._next, order_id, status, customer_id, START)
        self._next += 1
        return event

    def commit(self, *events: StatusEvent) -> None:
        for event in events:
            self.rows[event.id] = event

    def add(self, order_id: int, status: str, customer_id: str | None = None) -> StatusEvent:
        event = self.take(order_id, status, customer_id)
        self.commit(event)
        return event

    async def last_id(self) -> int:
        return max(self.rows, default=0)

    async def after(
        self,
        after: int,
        *,
        limit: int,
        upto: int | None = None,
        order_id: int | None = None,
        customer_id: str | None = None,
    ) -> list[StatusEvent]:
        self.catch_ups += upto is not None
        found = [
            e
            for i, e in sorted(self.rows.items())
            if i > after
            and (upto is None or i <= upto)
            and (order_id is None or e.order_id == order_id)
            and (customer_id is None or e.customer_id == customer_id)
        ]
        return found[:limit]


class FakeWebhookStore:
    """``order_webhooks`` in memory (orders/repository.py ``SqlWebhookStore``): a claim
    leases due hooks, an outcome is recorded only if ``after_id`` is unchanged."""

    def __init__(self) -> None:
        self.hooks: dict[int, Webhook] = {}
        self.next_attempt: dict[int, datetime | None] = {}
        self.settled: list[Delivery] = []

    async def add(self, url: str, secret: str, customer_id: str | None, after_id: int) -> Webhook:
        hook = Webhook(len(self.hooks) + 1, url, secret, customer_id, after_id)
        self.hooks[hook.id] = hook
        self.next_attempt[hook.id] = None
        return hook

    async def all(self) -> list[Webhook]:
        return list(self.hooks.values())

    async def remove(self, hook_id: int) -> bool:
        self.next_attempt.pop(hook_id, None)
        return self.hooks.pop(hook_id, None) is not None

    async def claim(self, now: datetime, lease_until: datetime, limit: int) -> list[Webhook]:
        due = [
            i
            for i, at in self.next_attempt.items()
            if (at is None or at <= now) and self.hooks[i].status == ACTIVE
        ][:limit]
        for hook_id in due:
            self.next_attempt[hook_id] = lease_until
        return [self.hooks[i] for i in due]

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
        current = self.hooks.get(hook.id)
        if current is None or current.after_id != hook.after_id:
            return False
        self.hooks[hook.id] = replace(
            current,
            after_id=after_id,
            attempts=attempts,
            last_error=error,
            delivery_upto=delivery_upto,
            failing_since=failing_since,
            status=status,
        )
        self.next_attempt[hook.id] = next_attempt_at
        if record is not None:
            self.settled.append(replace(record, id=len(self.settled) + 1))
        return True

    async def begin(self, hook: Webhook, upto: int) -> bool:
        current = self.hooks.get(hook.id)
        if current is None or current.after_id != hook.after_id or current.delivery_upto:
            return False
        self.hooks[hook.id] = replace(current, delivery_upto=upto)
        return True

    async def deliveries(self, status: str | None, limit: int) -> list[Delivery]:
        found = [d for d in reversed(self.settled) if status is None or d.status == status]
        return found[:limit]

    async def replay(self, delivery_id: int | None) -> list[Delivery]:
        replayed = []
        for i, d in enumerate(self.settled):
            hook = self.hooks.get(d.hook_id)
            if d.status != DEAD or delivery_id not in (None, d.id) or hook is None:
                continue
            if hook.status != PAUSED or hook.after_id != d.after_id:
                continue
            self.hooks[d.hook_id] = replace(
                hook, status=ACTIVE, attempts=0, failing_since=None, last_error=None
            )
            self.next_attempt[d.hook_id] = None
            self.settled[i] = replace(d, status=REPLAYED)
            replayed.append(d)
        return replayed

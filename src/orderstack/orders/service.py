"""The order service's use cases. Collaborators come in as arguments (bootstrap.py).

Who owns the transaction, by kind of use case (messaging/uow.py):

- a request's use case (``create_order``, ``cancel_order``, ``confirm_order``, ``get_order``,
  the lists, ``resend_stale_pending``, ``expire_due``) opens its own ``OrderUoW`` from
  ``uow_factory`` and commits it;
- an event's use case (``settle_orders``) takes the consumer's open unit of work as an
  ``OrderTransaction`` as its first argument and never commits it: the consumer commits it
  with its inbox claim (messaging/consumer.py), then acknowledges the deliveries.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal, Protocol, TypeVar

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError

from orderstack.admission import SettleDelayShedder
from orderstack.batching import Batcher
from orderstack.messaging.outbox import Origin
from orderstack.messaging.uow import Transaction, UnitOfWork
from orderstack.orders.catalog import ProductCatalog
from orderstack.orders.domain import (
    Failure,
    IdempotencyKeyReused,
    NewOrder,
    Order,
    OrderExpired,
    OrderLine,
    OrderNotCancellable,
    OrderNotFound,
    OrderNotReserved,
    OrderStatus,
    PriceCheck,
    SettleOrder,
    UnknownProduct,
    moves_into,
    request_fingerprint,
)
from orderstack.orders.events import (
    order_cancelled_event,
    order_created_event,
    order_expired_event,
)
from orderstack.storage.errors import server_code
from orderstack.storage.retry import retry_on_broken_connection
from orderstack.storage.types import utcnow

log = structlog.get_logger(__name__)

T = TypeVar("T")


class OrderRepository(Protocol):
    """What the use cases need of order storage. ``move_many`` applies a move the domain
    allows (``moves_into``) atomically, in the storage's own condition."""

    async def add_many(self, new: Sequence[NewOrder], now: datetime) -> list[Order]: ...
    async def get(self, order_id: int) -> Order | None: ...
    async def lock(self, order_id: int) -> Order | None: ...
    async def by_request_id(self, request_id: str) -> tuple[Order, str | None] | None: ...
    async def find(
        self,
        *,
        status: OrderStatus | None = None,
        product_id: int | None = None,
        customer_id: str | None = None,
        after: int = 0,
        limit: int,
    ) -> list[Order]: ...
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
    ) -> int: ...
    async def database_now(self, fallback: datetime) -> datetime: ...
    async def holds(self, order_ids: Sequence[int]) -> dict[int, int]: ...
    async def lock_expired(self, limit: int, now: datetime) -> list[Order]: ...
    async def claim_stale_pending(
        self,
        updated_before: datetime,
        limit: int,
        now: datetime,
        next_resend_at: Callable[[int], datetime] | None = None,
    ) -> list[Order]: ...
    async def record_prices(
        self, priced: Mapping[int, tuple[Sequence[OrderLine], Decimal | None]]
    ) -> None: ...
    async def record_failures(self, failures: Mapping[int, Failure]) -> None: ...


class OrderTransaction(Transaction, Protocol):
    """The consumer's open unit of work, as an event's use case writes in it: the
    repository and the outbox; no commit (the consumer commits)."""

    @property
    def orders(self) -> OrderRepository: ...


class OrderUoW(OrderTransaction, UnitOfWork, Protocol):
    """The unit of work a request's use case opens from ``uow_factory`` and commits."""


# The product service's answer settles a pending order only; a reserved one moves by its
# client's confirm, its expiry or a cancel.
_SETTLES = frozenset({OrderStatus.PENDING})
_RESERVED_ONLY = frozenset({OrderStatus.RESERVED})

# Orders accepted here and not seen settled are forgotten after this (another replica's
# consumer may have settled them): the sojourn samples are of orders settled here.
_SOJOURN_MEMORY_SECONDS = 60.0
# The created_at of orders accepted here, kept until they settle here for the settle-delay
# observer: at most this many (the oldest forgotten first) and for at most this long. An
# order settled by another replica's consumer, or after a restart, or later than this, is
# not observed: the outbox's age and the sweeper's resends tell those delays instead.
_SETTLE_MEMORY_ORDERS = 100_000
_SETTLE_MEMORY = timedelta(minutes=10)

# Told, after the commit that settled an order (confirmed or failed), its status and the
# seconds from its created_at: /metrics' order_settle_duration_seconds (bootstrap.py).
SettleObserver = Callable[[OrderStatus, float], None]
# Its buckets, in seconds: from a settle of a few milliseconds to one the sweeper's resends
# healed; 1 s is the settle SLO's bound (deploy/alerts.yml).
SETTLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True)
class OrderPage:
    orders: list[Order]
    next_after: int | None  # the cursor of the next page; None on the last page


def resend_delay(
    resends: int,
    first: float,
    cap: float,
    draw: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds from an order's ``resends``-th resend to its next one: ``first`` × 2^resends,
    at most ``cap``, jittered down by up to half (``draw(low, high)``) so that orders resent
    together spread out; never less than ``first``. During a product-service outage each
    pending order is then resent a handful of times an hour instead of every ``first``."""
    ceiling = min(cap, first * 2.0 ** min(resends, 32))
    return max(first, draw(ceiling / 2, ceiling))


# A deadlock: the server rolled the whole transaction back, so it may run again. A cancel,
# a confirm and the expiry sweep of one order can deadlock on InnoDB (one locks the row,
# then the status index entry; another the other way round): the loser runs again.
_DEADLOCK_CODES = frozenset({1213, "40P01"})
_DEADLOCK_ATTEMPTS = 3


async def _retry_deadlocks(transaction: Callable[[], Awaitable[T]]) -> T:
    """``retry_on_broken_connection``, and up to two more runs after a deadlock."""
    for _ in range(_DEADLOCK_ATTEMPTS - 1):
        try:
            return await retry_on_broken_connection(transaction)
        except DBAPIError as exc:
            if server_code(exc.orig) not in _DEADLOCK_CODES:
                raise
            log.info("deadlock; the transaction runs again", error=repr(exc.orig))
    return await retry_on_broken_connection(transaction)


def _sees(owner: str | None, order: Order) -> bool:
    """Whether a caller limited to ``owner``'s orders (None: to none) may see ``order``."""
    return owner is None or order.customer_id == owner


class OrderService:
    def __init__(
        self,
        uow_factory: Callable[[], OrderUoW],
        catalog: ProductCatalog,
        clock: Callable[[], datetime] = utcnow,
        *,
        write_batch: int = 200,
        shedder: SettleDelayShedder | None = None,
        price_check: PriceCheck = PriceCheck.STRICT,
        hold_seconds: int = 0,
        settle_observer: SettleObserver | None = None,
    ) -> None:
        """``shedder``: told how long each order accepted here took to settle (the door
        refuses new orders with it while they settle late: admission.py). ``price_check``:
        what a client's total is (``ORDER_PRICE_CHECK``). ``settle_observer``: told each
        order accepted and settled here, with the seconds from its created_at (memory
        only, no query: see ``_SETTLE_MEMORY_ORDERS``)."""
        self._uow_factory, self._catalog, self._clock = uow_factory, catalog, clock
        self._price_check = PriceCheck(price_check)
        # An order's hold when its request asks for none (ORDER_HOLD_SECONDS; 0: no hold).
        self._default_hold = hold_seconds or None
        self._shedder = shedder
        # When each order accepted here was stored (monotonic), until it settles here.
        self._accepted: OrderedDict[int, float] = OrderedDict()
        self._settle_observer = settle_observer
        # Each order accepted here and not yet settled here: its created_at (with an observer).
        self._created: OrderedDict[int, datetime] = OrderedDict()
        # Concurrent creations share a transaction: the order table's inserts and their
        # outbox rows go in a few statements per batch instead of per order.
        # Each order keeps the origin of its own request (X-Request-ID, traceparent): the
        # batch is written in one task for many requests.
        self._intake: Batcher[tuple[NewOrder, Origin], Order] = Batcher(
            self._store_orders, max_batch=write_batch, commits=True
        )
        # Orders this process moved into each status (created: pending), counted after
        # commit; read by /metrics as orders_total{status}.
        self.entered: Counter[OrderStatus] = Counter({status: 0 for status in OrderStatus})

    @property
    def intake_batch_sizes(self) -> Counter[int]:
        """Orders per INSERT batch (batches by size), read by /metrics as batch_size."""
        return self._intake.batch_sizes

    async def create_order(
        self,
        product_id: int | None = None,
        total_price: Decimal | None = None,
        request_id: str | None = None,
        *,
        quantity: int = 1,
        items: Sequence[OrderLine] = (),
        customer_id: str | None = None,
        hold_seconds: int | None = None,
    ) -> tuple[Order, bool]:
        """Store a pending order of ``items`` (or the one line ``product_id`` ×
        ``quantity``) and its ``order.created`` event in one transaction.

        ``total_price``: the total the client sent; with the strict price check
        (``price_check``) it is the total the client agreed to, and the product service
        fails the order (``price_changed``) unless the catalog's is the same; None: priced
        by the catalog. ``customer_id``: who places it (its token's subject), None without.
        ``hold_seconds``: placed as a hold (None: the service's default, ORDER_HOLD_SECONDS):
        once its units are taken it is ``reserved`` until its client confirms it
        (``confirm_order``) or it expires (``expire_due``).

        Returns (order, created). With a ``request_id`` already used for the same request
        (same fingerprint), returns the order it created and False: a retried request does
        not order twice. Keys are compared exactly and never expire (orders are not deleted).
        Raises IdempotencyKeyReused when the key was used for a different request (nothing
        is written), UnknownProduct (naming each unknown product), CatalogUnavailable.
        """
        lines = tuple(items)
        if not lines:
            if product_id is None:
                raise ValueError("an order names a product or its items")
            lines = (OrderLine(product_id, quantity),)
        hold = hold_seconds if hold_seconds is not None else self._default_hold
        fingerprint = None
        if request_id is not None:
            # The request as sent: a retry is the same request whatever ORDER_HOLD_SECONDS
            # says by then.
            fingerprint = request_fingerprint(lines, total_price, customer_id, hold_seconds)
            existing = await self._by_request_id(request_id, fingerprint)
            if existing is not None:
                return existing, False
        products = list(dict.fromkeys(line.product_id for line in lines))
        if len(products) == 1:  # the common order: no task per lookup
            known = [await self._catalog.product_exists(products[0])]
        else:  # looked up concurrently (the catalog batches them into one cache read)
            known = await asyncio.gather(*(self._catalog.product_exists(p) for p in products))
        unknown = [p for p, found in zip(products, known, strict=True) if not found]
        if unknown:
            raise UnknownProduct(*unknown)
        agreed = total_price if self._price_check is PriceCheck.STRICT else None
        new = NewOrder(lines, total_price, request_id, fingerprint, agreed, customer_id, hold)
        try:
            order = await self._intake.submit((new, Origin.current()))
        except IntegrityError:
            if request_id is None or fingerprint is None:
                raise
            # A concurrent twin won the race for the key.
            existing = await self._by_request_id(request_id, fingerprint)
            if existing is None:
                raise
            return existing, False
        return order, True

    async def _store_orders(self, new: Sequence[tuple[NewOrder, Origin]]) -> list[Order]:
        async with self._uow_factory() as uow:
            stored: list[Order] = await uow.orders.add_many([n for n, _ in new], self._clock())
            await uow.outbox.add(
                [
                    origin.stamp(order_created_event(order))
                    for order, (_, origin) in zip(stored, new, strict=True)
                ]
            )
            await uow.commit()
        self.entered[OrderStatus.PENDING] += len(stored)
        if self._settle_observer is not None:
            self._remember_created(stored)
        if self._shedder is not None:
            now = self._shedder.clock()
            accepted = self._accepted
            for order in stored:
                accepted[order.id] = now
            # Oldest first (insertion order): forget those settled elsewhere.
            while accepted and now - accepted[next(iter(accepted))] >= _SOJOURN_MEMORY_SECONDS:
                accepted.popitem(last=False)
        return stored

    def _remember_created(self, stored: Sequence[Order]) -> None:
        if not stored:
            return
        created = self._created
        for order in stored:
            created[order.id] = order.created_at
        # Oldest first (insertion order): forget those settled elsewhere, or too late.
        forget_before = stored[-1].created_at - _SETTLE_MEMORY
        while created and (
            len(created) > _SETTLE_MEMORY_ORDERS or created[next(iter(created))] < forget_before
        ):
            created.popitem(last=False)

    def _observe_settled(self, settled: Mapping[int, OrderStatus]) -> None:
        observe = self._settle_observer
        if observe is None:
            return
        now = self._clock()
        for order_id, status in settled.items():
            created_at = self._created.pop(order_id, None)
            if created_at is not None:  # a clock stepped back: never below 0
                observe(status, max(0.0, (now - created_at).total_seconds()))

    async def _by_request_id(self, request_id: str, fingerprint: str) -> Order | None:
        """The order of an earlier use of the key, or None; raises IdempotencyKeyReused when
        that use was for another request. Orders stored before fingerprints existed (None)
        are taken as matching: there is nothing to compare them with."""

        async def read() -> tuple[Order, str | None] | None:
            async with self._uow_factory() as uow:
                return await uow.orders.by_request_id(request_id)

        found = await retry_on_broken_connection(read)
        if found is None:
            return None
        order, stored = found
        if stored is not None and stored != fingerprint:
            raise IdempotencyKeyReused(request_id)
        return order

    async def get_order(self, order_id: int, *, owner: str | None = None) -> Order:
        """Raises OrderNotFound; with ``owner``, for another customer's order too (it is
        not told apart from one that does not exist)."""

        async def read() -> Order | None:
            async with self._uow_factory() as uow:
                return await uow.orders.get(order_id)

        order = await retry_on_broken_connection(read)
        if order is None or not _sees(owner, order):
            raise OrderNotFound(order_id)
        return order

    async def cancel_order(self, order_id: int, *, owner: str | None = None) -> tuple[Order, bool]:
        """Cancel a pending or confirmed order: move it to ``cancelled`` and write
        ``order.cancelled`` (the product service gives its units back) in one transaction.
        Returns (order, cancelled now).

        Idempotent: an order cancelled already is returned as it is, with False, and no
        event is written again; of two concurrent cancellations one moves the order, the
        other finds it cancelled. With ``owner``, another customer's order is not found.
        Raises OrderNotFound, OrderNotCancellable (it failed);
        either way nothing is written. A connection found broken before the COMMIT runs the
        transaction once more (nothing of it was kept)."""
        cancelled, now_cancelled = await _retry_deadlocks(lambda: self._cancel(order_id, owner))
        if now_cancelled:
            self.entered[OrderStatus.CANCELLED] += 1
            self._created.pop(order_id, None)  # it will not settle
            log.info("order cancelled", order_id=order_id)
        return cancelled, now_cancelled

    async def _cancel(self, order_id: int, owner: str | None) -> tuple[Order, bool]:
        async with self._uow_factory() as uow:
            order: Order | None = await uow.orders.get(order_id)
            if order is None or not _sees(owner, order):  # its owner never changes
                raise OrderNotFound(order_id)
            now = self._clock()
            moved = await uow.orders.move_many(
                [order_id], OrderStatus.CANCELLED, moves_into(OrderStatus.CANCELLED), now
            )
            if not moved:
                # Not pending or confirmed, as the UPDATE saw it (it may have moved since
                # the read above): read what it is now.
                order = await uow.orders.get(order_id)
                if order is None:
                    raise OrderNotFound(order_id)
                if order.status is OrderStatus.CANCELLED:
                    return order, False
                raise OrderNotCancellable(order_id, order.status)
            cancelled = replace(order, status=OrderStatus.CANCELLED)
            await uow.outbox.add([order_cancelled_event(cancelled, now)])
            await uow.commit()
        return cancelled, True

    async def list_orders(
        self,
        *,
        status: OrderStatus | None = None,
        product_id: int | None = None,
        owner: str | None = None,
        after: int = 0,
        limit: int,
    ) -> OrderPage:
        """A page of up to ``limit`` orders with an id above ``after``, oldest (lowest id)
        first, of that status, product and customer (``owner``) when given. ``next_after``
        is the cursor of the next page (the last id of this one) when more orders follow,
        else None.

        Walking pages with ``after=next_after`` never returns an order twice, whatever is
        written meanwhile: ids only grow along the walk."""

        async def read() -> list[Order]:
            async with self._uow_factory() as uow:
                return await uow.orders.find(
                    status=status,
                    product_id=product_id,
                    customer_id=owner,
                    after=after,
                    limit=limit + 1,
                )

        found = await retry_on_broken_connection(read)
        if len(found) > limit:
            return OrderPage(found[:limit], found[limit - 1].id)
        return OrderPage(found, None)

    async def orders_for_product(
        self, product_id: int, limit: int, after: int = 0, *, owner: str | None = None
    ) -> OrderPage:
        """Oldest first (of ``owner`` alone when given); an empty page when there are none."""
        return await self.list_orders(product_id=product_id, owner=owner, after=after, limit=limit)

    async def settle_orders(
        self, uow: OrderTransaction, answers: Sequence[SettleOrder]
    ) -> dict[int, bool | None]:
        """Apply the product service's answers inside the consumer's transaction (it
        commits, with its inbox claim; the counts move after that commit). A pending
        order moves once; an answer for an order already settled (or unknown) changes nothing.

        Returns, for each order answered, whether its answer moved it: True, False (it was
        not pending), or None when only some of the orders answered alike moved (one
        statement moves them all and counts them, without naming them)."""
        first: dict[int, SettleOrder] = {}
        for answer in answers:
            first.setdefault(answer.order_id, answer)  # the first answer for an order wins
        now = self._clock()
        settled: Counter[OrderStatus] = Counter()
        outcome: dict[int, bool | None] = {}
        moved_here: dict[int, OrderStatus] = {}  # the orders whose answer surely moved them
        for status in (OrderStatus.CONFIRMED, OrderStatus.FAILED):
            ids = sorted(a.order_id for a in first.values() if a.status is status)
            # Only a pending order settles (a reserved one waits for its client's confirm).
            if status is OrderStatus.CONFIRMED:
                moved = await uow.orders.move_many(ids, status, _SETTLES, now, held=False)
                settled[status] += moved
                if moved < len(ids):
                    reserved = await self._reserve_held(uow, ids, now)
                    settled[OrderStatus.RESERVED] += reserved
                    moved += reserved
            else:
                moved = await uow.orders.move_many(ids, status, _SETTLES, now)
                settled[status] += moved
            for order_id in ids:
                outcome[order_id] = True if moved == len(ids) else False if not moved else None
                if moved == len(ids):
                    moved_here[order_id] = status
            if moved < len(ids):
                log.info(
                    "answers for orders not pending ignored",
                    status=str(status),
                    ignored=len(ids) - moved,
                )
        # What the answers say beyond the status: the prices the lines were reserved at,
        # why an order failed. Written where the status says it holds (once).
        await uow.orders.record_prices(
            {
                a.order_id: (a.priced, a.total)
                for a in first.values()
                if a.status is OrderStatus.CONFIRMED and (a.priced or a.total is not None)
            }
        )
        await uow.orders.record_failures(
            {
                a.order_id: a.failure
                for a in first.values()
                if a.status is OrderStatus.FAILED and a.failure is not None
            }
        )

        async def count_settled() -> None:
            self.entered.update(settled)
            self._observe_settled(moved_here)
            if self._shedder is not None:
                now = self._shedder.clock()
                for order_id in first:
                    stored_at = self._accepted.pop(order_id, None)
                    if stored_at is not None:
                        self._shedder.settled(now - stored_at)

        uow.after_commit(count_settled)
        return outcome

    async def _reserve_held(self, uow: OrderTransaction, ids: Sequence[int], now: datetime) -> int:
        """Move the held orders of ``ids`` still pending to ``reserved``, each expiring its
        hold after the database's clock now; return how many moved."""
        holds = await uow.orders.holds(ids)
        if not holds:
            return 0
        start = await uow.orders.database_now(now)
        by_hold: dict[int, list[int]] = {}
        for order_id, hold in holds.items():
            by_hold.setdefault(hold, []).append(order_id)
        moved = 0
        for hold, held_ids in sorted(by_hold.items()):
            moved += await uow.orders.move_many(
                sorted(held_ids),
                OrderStatus.RESERVED,
                _SETTLES,
                now,
                held=True,
                expires_at=start + timedelta(seconds=hold),
            )
        return moved

    async def confirm_order(
        self, order_id: int, *, payment_reference: str | None = None, owner: str | None = None
    ) -> tuple[Order, bool]:
        """Confirm a reserved order before its hold expires: it becomes ``confirmed`` (its
        units stay taken), with ``payment_reference`` recorded. Returns (order, confirmed
        now).

        Idempotent: a confirmed order is returned as it is, with False. One conditional
        UPDATE (reserved and ``expires_at`` after the database's clock) decides against a
        concurrent expiry or cancel: exactly one of them moves the order. Raises
        OrderNotFound (another customer's too), OrderExpired (its hold ended: the order is
        ``expired``; one still ``reserved`` past its hold is expired here and then, its
        units sent back), OrderNotReserved (pending, failed, cancelled)."""
        order, confirmed, expired = await _retry_deadlocks(
            lambda: self._confirm(order_id, payment_reference, owner)
        )
        if confirmed:
            self.entered[OrderStatus.CONFIRMED] += 1
            log.info("held order confirmed", order_id=order_id)
        if expired:
            self.entered[OrderStatus.EXPIRED] += 1
            log.info("held order expired", order_id=order_id, orders=1)
        if order.status is OrderStatus.EXPIRED:
            raise OrderExpired(order)
        if order.status is not OrderStatus.CONFIRMED:
            raise OrderNotReserved(order_id, order.status)
        return order, confirmed

    async def _confirm(
        self, order_id: int, payment_reference: str | None, owner: str | None
    ) -> tuple[Order, bool, bool]:
        """(the order as it is now, confirmed now, expired now)."""
        async with self._uow_factory() as uow:
            # Locked first (repository.lock), as the expiry sweep locks its rows: a confirm
            # racing it waits instead of deadlocking.
            order: Order | None = await uow.orders.lock(order_id)
            if order is None or not _sees(owner, order):
                raise OrderNotFound(order_id)
            if order.status is not OrderStatus.RESERVED:
                return order, False, False
            now = self._clock()
            if await uow.orders.move_many(
                [order_id],
                OrderStatus.CONFIRMED,
                _RESERVED_ONLY,
                now,
                expiry="unexpired",
                payment_reference=payment_reference,
            ):
                await uow.commit()
                confirmed = replace(
                    order, status=OrderStatus.CONFIRMED, payment_reference=payment_reference
                )
                return confirmed, True, False
            # Not reserved and unexpired as the UPDATE saw it: expired past its hold (expire
            # it now, as the sweep would), or moved since the read above.
            if await uow.orders.move_many(
                [order_id], OrderStatus.EXPIRED, _RESERVED_ONLY, now, expiry="due"
            ):
                expired = replace(order, status=OrderStatus.EXPIRED)
                await uow.outbox.add([order_expired_event(expired, now)])
                await uow.commit()
                return expired, False, True
            found = await uow.orders.get(order_id)
            if found is None:
                raise OrderNotFound(order_id)
            return found, False, False

    async def expire_due(self, batch: int) -> int:
        """Expire up to ``batch`` reserved orders whose hold ended (the database's clock):
        each becomes ``expired`` and its ``order.expired`` (the product service gives the
        units back, once) is written to the outbox, in one transaction; return how many.
        Safe on several replicas at once: due rows are locked and skipped by the others
        (``FOR UPDATE SKIP LOCKED``), and the move is conditional on ``reserved``, so a
        confirm or cancel racing it has exactly one winner."""
        return await _retry_deadlocks(lambda: self._expire_due(batch))

    async def _expire_due(self, batch: int) -> int:
        async with self._uow_factory() as uow:
            now = self._clock()
            due = await uow.orders.lock_expired(batch, now)
            if not due:
                return 0
            ids = [order.id for order in due]
            moved = await uow.orders.move_many(ids, OrderStatus.EXPIRED, _RESERVED_ONLY, now)
            if moved != len(ids):
                # Locked rows cannot have moved; if they did, which ones did is unknown, so
                # nothing is written (rolled back): the next round looks again.
                log.warning("expiry round rolled back", due=len(ids), moved=moved)
                return 0
            await uow.outbox.add(
                [order_expired_event(replace(o, status=OrderStatus.EXPIRED), now) for o in due]
            )
            await uow.commit()
        self.entered[OrderStatus.EXPIRED] += moved
        log.info("held orders expired", orders=moved)
        return moved

    async def resend_stale_pending(
        self, pending_for: float, batch: int, *, max_wait: float | None = None
    ) -> int:
        """Write a fresh ``order.created`` (new event id, the original payload) for up to
        ``batch`` orders due for a resend, and restart their wait, in one transaction;
        return how many. Due: pending for more than ``pending_for`` seconds and never
        resent, or resent and past the wait that followed (``resend_delay``: it doubles
        with each resend, up to ``max_wait``; None: ``pending_for`` every time). Heals an
        ``order.created`` or an answer that was lost: the product service answers a known
        order again with the answer it recorded. Safe to run on several replicas at once
        (claimed rows are skipped)."""
        async with self._uow_factory() as uow:
            now = self._clock()

            def next_resend_at(resends: int) -> datetime:
                assert max_wait is not None
                return now + timedelta(seconds=resend_delay(resends, pending_for, max_wait))

            stale: list[Order] = await uow.orders.claim_stale_pending(
                now - timedelta(seconds=pending_for),
                batch,
                now,
                next_resend_at if max_wait is not None else None,
            )
            await uow.outbox.add([order_created_event(order) for order in stale])
            await uow.commit()
        if stale:
            log.info("order.created sent again for stale pending orders", orders=len(stale))
        return len(stale)

    async def warm_cache(self, product_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """(cached, not_found); raises CatalogUnavailable."""
        return await self._catalog.warm(product_ids)

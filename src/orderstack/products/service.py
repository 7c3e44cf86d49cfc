"""The product service's use cases. Collaborators come in as arguments (bootstrap.py).

Who owns the transaction, by kind of use case (messaging/uow.py):

- a request's use case (``create_product``, ``update_product``, ``adjust_stock``,
  ``delete_product``, the reads) opens its own ``ProductUoW`` and commits it;
- an event's use case (``apply_order_events``, and ``reserve_stock`` and
  ``cancel_reservations`` that call it) takes the consumer's open unit of work as a
  ``ProductTransaction`` as its first argument and never commits it: the consumer commits
  it with its inbox claim (messaging/consumer.py), then acknowledges the deliveries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from orderstack.batching import Batcher
from orderstack.cache.port import CachedProduct, KnownEpoch, ProductCache
from orderstack.messaging.outbox import Origin
from orderstack.messaging.uow import Transaction, UnitOfWork
from orderstack.products.caching import (
    DatabaseEpoch,
    EpochCache,
    cache_entry,
    product_from,
    tombstone,
)
from orderstack.products.domain import (
    CREATED_REASON,
    PATCH_REASON,
    CancelReservation,
    NewProduct,
    Product,
    ProductChanges,
    ProductNotFound,
    Reservation,
    ReservationOutcome,
    ReserveStock,
    StockAdjustment,
    VersionMismatch,
    allocate,
    cancel,
)
from orderstack.products.events import product_created_event, reservation_answer
from orderstack.storage.retry import retry_on_broken_connection
from orderstack.storage.types import utcnow


class ProductRepository(Protocol):
    """What the use cases need of product storage: lock, read, write. The rules that
    decide what to write are in the domain (products/domain.py)."""

    async def add_many(self, new: Sequence[NewProduct], now: datetime) -> list[Product]: ...
    async def record_openings(
        self, opened: Sequence[Product], reason: str, now: datetime
    ) -> None: ...
    async def get(self, product_id: int) -> Product | None: ...
    async def page(self, limit: int, offset: int) -> tuple[list[Product], int]: ...
    async def lock(self, product_id: int) -> Product | None: ...
    async def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]: ...
    async def update(
        self,
        product_id: int,
        changes: ProductChanges,
        now: datetime,
        expected_versions: Collection[int] | None = None,
    ) -> bool: ...
    async def add_to_qty(self, product_id: int, delta: int, now: datetime) -> bool: ...
    async def save_stock(self, changed: Sequence[Product], now: datetime) -> None: ...
    async def delete(self, product_id: int, now: datetime) -> int | None: ...
    async def record_adjustment(
        self, product_id: int, delta: int, reason: str, qty_after: int, now: datetime
    ) -> StockAdjustment: ...
    async def reservations_of(self, order_ids: Sequence[int]) -> dict[int, Reservation]: ...
    async def held_units(self, product_id: int) -> int: ...
    async def record_reservations(self, new: Sequence[Reservation], now: datetime) -> None: ...
    async def mark_cancelled(self, order_ids: Sequence[int], now: datetime) -> int: ...
    async def epoch(self) -> str: ...


class ProductTransaction(Transaction, Protocol):
    """The consumer's open unit of work, as an event's use case writes in it: the
    repository and the outbox; no commit (the consumer commits)."""

    @property
    def products(self) -> ProductRepository: ...


class ProductUoW(ProductTransaction, UnitOfWork, Protocol):
    """The unit of work a request's use case opens and commits."""


class ProductService:
    def __init__(
        self,
        uow_factory: Callable[[], ProductUoW],
        cache: ProductCache,
        clock: Callable[[], datetime] = utcnow,
        *,
        write_batch: int = 200,
        known_epoch: KnownEpoch | None = None,
    ) -> None:
        """``cache``: the shared cache; this service reads and writes only entries of its
        database's epoch (``epoch``), also told to ``known_epoch`` when given."""
        self._new_uow, self._clock = uow_factory, clock
        self._uow_factory = self._unit_of_work
        self.epoch = DatabaseEpoch(self._read_epoch, known_epoch)
        self._cache = EpochCache(cache, self.epoch)
        # Concurrent creations share a transaction (group commit): the products, their
        # opening ledger entries and their events in a few statements per batch. Each
        # keeps the origin of its own request (X-Request-ID, traceparent).
        self._creations: Batcher[tuple[NewProduct, Origin], Product] = Batcher(
            self._store_products, max_batch=write_batch, commits=True
        )
        # Concurrent reads share one cache round trip.
        self._lookups: Batcher[int, CachedProduct | None] = Batcher(self._cache.get_many, writers=2)
        # Reservations this process recorded or moved, by outcome (confirmed, failed,
        # cancelled), counted after commit; read by /metrics as stock_reservations_total.
        self.reservations: Counter[ReservationOutcome] = Counter(
            {outcome: 0 for outcome in ReservationOutcome}
        )

    async def _read_epoch(self) -> str:
        async with self._new_uow() as uow:
            epoch: str = await uow.products.epoch()
        return epoch

    async def _learn_epoch(self, uow: ProductTransaction) -> None:
        """Read the database's epoch in ``uow`` if it never was: the cache writes after its
        commit need it, and reading it then would take a second connection (or, on the
        fakes, wait for the lock ``uow`` holds)."""
        if self.epoch.value is None:
            self.epoch.learn(await uow.products.epoch())

    @asynccontextmanager
    async def _unit_of_work(self) -> AsyncIterator[ProductUoW]:
        """A unit of work of the use cases (``uow_factory``'s), that knows the epoch."""
        async with self._new_uow() as uow:
            await self._learn_epoch(uow)
            yield uow

    async def create_product(self, name: str, price: Decimal, qty: int) -> Product:
        """Store the product, its opening entry in the stock ledger (reason ``created``)
        and ``product_created``, in the same transaction."""
        product: Product = await self._creations.submit(
            (NewProduct(name, price, qty), Origin.current())
        )
        return product

    async def _store_products(self, new: Sequence[tuple[NewProduct, Origin]]) -> list[Product]:
        now = self._clock()
        async with self._uow_factory() as uow:
            stored: list[Product] = await uow.products.add_many([n for n, _ in new], now)
            await uow.products.record_openings(stored, CREATED_REASON, now)
            await uow.outbox.add(
                [
                    origin.stamp(product_created_event(product, now))
                    for product, (_, origin) in zip(stored, new, strict=True)
                ]
            )
            uow.after_commit(lambda: self._cache.put(*(cache_entry(p) for p in stored)))
            await uow.commit()
        return stored

    async def cached_product(self, product_id: int) -> Product | None:
        """The product as the cache holds it: None on a miss, a tombstone or a cache
        outage, where ``get_product`` reads the row (or raises ProductNotFound)."""
        cached = await self._lookups.submit(product_id)
        return None if cached is None else product_from(cached)

    async def get_product(self, product_id: int) -> Product:
        """Read through the cache. Raises ProductNotFound (also for a deleted product)."""
        cached = await self._lookups.submit(product_id)
        if cached is not None:
            if cached.deleted:
                raise ProductNotFound(product_id)
            hit = product_from(cached)
            if hit is not None:
                return hit

        async def read() -> Product | None:
            async with self._uow_factory() as uow:
                return await uow.products.get(product_id)

        # A pooled connection found dead: once more on a fresh one, not a 503.
        product = await retry_on_broken_connection(read)
        if product is None:
            raise ProductNotFound(product_id)
        await self._cache.put(cache_entry(product))
        return product

    async def list_products(self, limit: int, offset: int) -> tuple[list[Product], int]:
        async def read() -> tuple[list[Product], int]:
            async with self._uow_factory() as uow:
                return await uow.products.page(limit, offset)

        return await retry_on_broken_connection(read)

    async def update_product(
        self,
        product_id: int,
        changes: ProductChanges,
        expected_versions: Collection[int] | None = None,
    ) -> Product:
        """Partial update of name / price / qty (a qty change is a restock or a correction,
        recorded in the stock ledger with reason ``patch``).

        With ``expected_versions`` (the client's ``If-Match``) the update applies only
        while the product's version is one of them, checked by the UPDATE itself.
        Raises ProductNotFound, VersionMismatch, StockLimitExceeded (the new qty and the
        units confirmed orders hold above MAX_QTY); in each case nothing is changed."""
        now = self._clock()
        async with self._uow_factory() as uow:
            before: Product | None = None
            if "qty" in changes:
                # The old qty, locked until commit, gives the ledger entry its delta.
                before = await uow.products.lock(product_id)
                if before is None:
                    raise ProductNotFound(product_id)
                if expected_versions is not None and before.version not in expected_versions:
                    raise VersionMismatch(product_id, before.version)  # before any other check
                held = await uow.products.held_units(product_id)
                before.qty_after(changes["qty"] - before.qty, held)
            if changes and not await uow.products.update(
                product_id, changes, now, expected_versions
            ):
                current = before or await uow.products.get(product_id)
                if current is None:
                    raise ProductNotFound(product_id)
                raise VersionMismatch(product_id, current.version)
            product = await uow.products.get(product_id)
            if product is None:
                raise ProductNotFound(product_id)
            stale = expected_versions is not None and product.version not in expected_versions
            if not changes and stale:
                # Nothing to write, so no UPDATE checked the version: check it here.
                raise VersionMismatch(product_id, product.version)
            if before is not None and product.qty != before.qty:
                await uow.products.record_adjustment(
                    product_id, product.qty - before.qty, PATCH_REASON, product.qty, now
                )
            uow.after_commit(lambda: self._cache.put(cache_entry(product)))
            await uow.commit()
        return product

    async def adjust_stock(
        self, product_id: int, delta: int, reason: str
    ) -> tuple[StockAdjustment, Product]:
        """Add ``delta`` units (negative: remove them) and record the change in the stock
        ledger, in one transaction; return the ledger entry and the product after.
        Concurrent reservations are never erased: the change is relative, on the locked row.
        Raises ProductNotFound, InsufficientStock (the stock would go below zero),
        StockLimitExceeded; in each case nothing is changed. Not idempotent: each call is
        one more adjustment."""
        now = self._clock()
        async with self._uow_factory() as uow:
            before = await uow.products.lock(product_id)
            if before is None:
                raise ProductNotFound(product_id)
            qty_after = before.qty_after(delta, await uow.products.held_units(product_id))
            if not await uow.products.add_to_qty(product_id, delta, now):
                raise AssertionError(f"product {product_id} changed under its row lock")
            product = replace(before, qty=qty_after, version=before.version + 1, updated_at=now)
            adjustment: StockAdjustment = await uow.products.record_adjustment(
                product_id, delta, reason, qty_after, now
            )
            uow.after_commit(lambda: self._cache.put(cache_entry(product)))
            await uow.commit()
        return adjustment, product

    async def delete_product(self, product_id: int) -> None:
        """Soft-delete; later orders for it fail. Raises ProductNotFound."""
        async with self._uow_factory() as uow:
            version = await uow.products.delete(product_id, self._clock())
            if version is None:
                raise ProductNotFound(product_id)
            gone = tombstone(product_id, version)
            uow.after_commit(lambda: self._cache.put(gone))
            await uow.commit()

    async def reserve_stock(
        self, uow: ProductTransaction, requests: Sequence[ReserveStock]
    ) -> None:
        """``apply_order_events`` for new orders only."""
        await self.apply_order_events(uow, requests)

    async def cancel_reservations(
        self, uow: ProductTransaction, cancellations: Sequence[CancelReservation]
    ) -> None:
        """``apply_order_events`` for cancelled orders only."""
        await self.apply_order_events(uow, cancellations)

    async def apply_order_events(
        self, uow: ProductTransaction, commands: Sequence[ReserveStock | CancelReservation]
    ) -> None:
        """Take stock for new orders and give it back for cancelled ones, inside the
        consumer's transaction (it commits, with its inbox claim), and write the answers
        to the outbox. Idempotent per order.

        New orders (``order.created``): each takes all its units or none (domain
        ``allocate``) and is answered. An order answered already takes no stock again; its
        recorded answer is written once more (a new event), which heals an answer lost on
        the way when the order service asks again. An order cancelled already takes nothing
        and is answered ``order.qty_failed`` (reason ``cancelled``).

        Cancelled orders (``order.cancelled``), applied before the new orders of the same
        batch: a confirmed order's units go back to its product, once; a second
        cancellation changes nothing; an order not seen yet is recorded as cancelled,
        holding nothing (domain ``cancel``). No answer is written for a cancellation.

        The products' rows are locked first (id order: two replicas' batches cannot
        deadlock), and the orders' reservations read after, so a cancellation and the stock
        take of the same order, in two transactions, see each other's outcome. The cache
        gets the products as they end up, after commit."""
        await self._learn_epoch(uow)
        now = self._clock()
        locked = await uow.products.lock_many(
            sorted({line.product_id for c in commands for line in c.lines})
        )
        known = await uow.products.reservations_of(sorted({c.order_id for c in commands}))
        changed: dict[int, Product] = {}
        recorded: Counter[ReservationOutcome] = Counter()
        cancellations = [c for c in commands if isinstance(c, CancelReservation)]
        if cancellations:
            decided = cancel(known, cancellations)
            await self._lock_more(uow, locked, decided.returned)
            for product_id, units in decided.returned.items():
                changed[product_id] = locked[product_id] = locked[product_id].give_back(units, now)
            await uow.products.record_reservations(
                [r for r in decided.reservations if r.order_id not in known], now
            )
            await uow.products.mark_cancelled(
                [r.order_id for r in decided.reservations if r.order_id in known], now
            )
            known.update({r.order_id: r for r in decided.reservations})
            recorded[ReservationOutcome.CANCELLED] += len(decided.reservations)
        requests = [c for c in commands if isinstance(c, ReserveStock)]
        if requests:
            recorded.update(await self._reserve(uow, requests, known, locked, changed, now))
        await uow.products.save_stock(list(changed.values()), now)
        if changed:
            entries = [
                tombstone(p.id, p.version) if p.deleted else cache_entry(p)
                for p in changed.values()
            ]
            uow.after_commit(lambda: self._cache.put(*entries))
        if recorded:

            async def count_recorded() -> None:
                self.reservations.update(recorded)

            uow.after_commit(count_recorded)

    async def _reserve(
        self,
        uow: ProductTransaction,
        requests: Sequence[ReserveStock],
        known: dict[int, Reservation],
        locked: dict[int, Product],
        changed: dict[int, Product],
        now: datetime,
    ) -> Counter[ReservationOutcome]:
        """Answer orders known already with their recorded outcome; allocate the rest.
        Returns the outcomes of the reservations recorded."""
        repeated = sorted({r.order_id for r in requests if r.order_id in known})
        if repeated:
            await uow.outbox.add([reservation_answer(known[o], now) for o in repeated])
        todo: dict[int, ReserveStock] = {}
        for request in requests:
            if request.order_id not in known:
                todo.setdefault(request.order_id, request)
        if not todo:
            return Counter()
        alive = {pid: p for pid, p in locked.items() if not p.deleted}
        allocation = allocate(
            {pid: p.qty for pid, p in alive.items()},
            list(todo.values()),
            {pid: p.price for pid, p in alive.items()},
        )
        for product_id, units in allocation.taken.items():
            changed[product_id] = locked[product_id] = locked[product_id].take(units, now)
        decided = [allocation.reservations[r.order_id] for r, _ in allocation.outcomes]
        await uow.products.record_reservations(decided, now)
        await uow.outbox.add([reservation_answer(r, now) for r in decided])
        return Counter(outcome for _, outcome in allocation.outcomes)

    @staticmethod
    async def _lock_more(
        uow: ProductTransaction, locked: dict[int, Product], needed: Collection[int]
    ) -> None:
        """Lock the products of ``needed`` not locked yet: a reservation recorded for
        another product than its event names (not sent by our order service)."""
        missing = sorted(set(needed) - set(locked))
        if missing:
            locked.update(await uow.products.lock_many(missing))
        lost = set(needed) - set(locked)
        if lost:
            raise AssertionError(f"products {sorted(lost)} hold reservations but have no row")

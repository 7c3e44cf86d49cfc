"""The product service's use cases. Collaborators come in as arguments (see app.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from orderstack.batching import Batcher
from orderstack.cache.port import CachedProduct, ProductCache
from orderstack.messaging.uow import UnitOfWork
from orderstack.products.caching import cache_entry, product_from, tombstone
from orderstack.products.domain import (
    CREATED_REASON,
    PATCH_REASON,
    Product,
    ProductNotFound,
    ReservationOutcome,
    ReserveStock,
    StockAdjustment,
    VersionMismatch,
    allocate,
)
from orderstack.products.events import product_created_event, reservation_answer
from orderstack.storage.types import utcnow


class ProductRepository(Protocol):
    """What the use cases need of product storage: lock, read, write. The rules that
    decide what to write are in the domain (products/domain.py)."""

    async def add(self, name: str, price: Decimal, qty: int, now: datetime) -> Product: ...
    async def get(self, product_id: int) -> Product | None: ...
    async def page(self, limit: int, offset: int) -> tuple[list[Product], int]: ...
    async def lock(self, product_id: int) -> Product | None: ...
    async def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]: ...
    async def update(
        self,
        product_id: int,
        changes: dict[str, Any],
        now: datetime,
        expected_versions: Collection[int] | None = None,
    ) -> bool: ...
    async def add_to_qty(self, product_id: int, delta: int, now: datetime) -> bool: ...
    async def save_stock(self, changed: Sequence[Product], now: datetime) -> None: ...
    async def delete(self, product_id: int, now: datetime) -> int | None: ...
    async def record_adjustment(
        self, product_id: int, delta: int, reason: str, qty_after: int, now: datetime
    ) -> StockAdjustment: ...
    async def answered_orders(self, order_ids: Sequence[int]) -> dict[int, ReservationOutcome]: ...
    async def record_reservations(
        self, outcomes: Sequence[tuple[int, int, ReservationOutcome]], now: datetime
    ) -> None: ...


class ProductUoW(UnitOfWork, Protocol):
    """The unit of work of this service's use cases: its repository, plus the outbox."""

    @property
    def products(self) -> ProductRepository: ...


class ProductService:
    def __init__(
        self,
        uow_factory: Callable[[], ProductUoW],
        cache: ProductCache,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._uow_factory, self._cache, self._clock = uow_factory, cache, clock
        # Concurrent reads share one cache round trip.
        self._lookups: Batcher[int, CachedProduct | None] = Batcher(cache.get_many, writers=2)

    async def create_product(self, name: str, price: Decimal, qty: int) -> Product:
        """Store the product, its opening entry in the stock ledger (reason ``created``)
        and ``product_created``, in the same transaction."""
        now = self._clock()
        async with self._uow_factory() as uow:
            product = await uow.products.add(name, price, qty, now)
            await uow.products.record_adjustment(product.id, qty, CREATED_REASON, qty, now)
            await uow.outbox.add([product_created_event(product, now)])
            uow.after_commit(lambda: self._cache.put(cache_entry(product)))
            await uow.commit()
        return product

    async def get_product(self, product_id: int) -> Product:
        """Read through the cache. Raises ProductNotFound (also for a deleted product)."""
        cached = await self._lookups.submit(product_id)
        if cached is not None:
            if cached.deleted:
                raise ProductNotFound(product_id)
            hit = product_from(cached)
            if hit is not None:
                return hit
        async with self._uow_factory() as uow:
            product = await uow.products.get(product_id)
        if product is None:
            raise ProductNotFound(product_id)
        await self._cache.put(cache_entry(product))
        return product

    async def list_products(self, limit: int, offset: int) -> tuple[list[Product], int]:
        async with self._uow_factory() as uow:
            page: tuple[list[Product], int] = await uow.products.page(limit, offset)
        return page

    async def update_product(
        self,
        product_id: int,
        changes: dict[str, Any],
        expected_versions: Collection[int] | None = None,
    ) -> Product:
        """Partial update of name / price / qty (a qty change is a restock or a correction,
        recorded in the stock ledger with reason ``patch``).

        With ``expected_versions`` (the client's ``If-Match``) the update applies only
        while the product's version is one of them, checked by the UPDATE itself.
        Raises ProductNotFound, VersionMismatch; either way nothing is changed."""
        now = self._clock()
        async with self._uow_factory() as uow:
            before: Product | None = None
            if "qty" in changes:
                # The old qty, locked until commit, gives the ledger entry its delta.
                before = await uow.products.lock(product_id)
                if before is None:
                    raise ProductNotFound(product_id)
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
            qty_after = before.qty_after(delta)
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

    async def reserve_stock(self, uow: ProductUoW, requests: Sequence[ReserveStock]) -> None:
        """Take one unit per order inside the caller's transaction and write each answer
        to the outbox. Idempotent per order: an order already answered takes no stock
        again; its recorded answer is written once more (a new event), which heals an
        answer lost on the way when the order service asks again."""
        now = self._clock()
        answered: dict[int, ReservationOutcome] = await uow.products.answered_orders(
            [r.order_id for r in requests]
        )
        todo: dict[int, ReserveStock] = {}
        for request in requests:
            if request.order_id not in answered:
                todo.setdefault(request.order_id, request)
        repeated = {r.order_id for r in requests if r.order_id in answered}
        if repeated:
            await uow.outbox.add(
                [reservation_answer(o, answered[o], now) for o in sorted(repeated)]
            )
        if not todo:
            return
        # Lock the products' rows (id order: two replicas' batches cannot deadlock), let
        # the domain decide on the locked quantities, write what it decided.
        locked = await uow.products.lock_many(sorted({r.product_id for r in todo.values()}))
        allocation = allocate({pid: p.qty for pid, p in locked.items()}, list(todo.values()))
        after = [locked[pid].take(units, now) for pid, units in allocation.taken.items()]
        await uow.products.save_stock(after, now)
        await uow.products.record_reservations(
            [(r.order_id, r.product_id, outcome) for r, outcome in allocation.outcomes], now
        )
        await uow.outbox.add(
            [reservation_answer(r.order_id, outcome, now) for r, outcome in allocation.outcomes]
        )
        if after:
            entries = [cache_entry(p) for p in after]
            uow.after_commit(lambda: self._cache.put(*entries))

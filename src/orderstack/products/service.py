"""The product service's use cases. Collaborators come in as arguments (see app.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from orderstack.batching import Batcher
from orderstack.cache.port import CachedProduct, ProductCache
from orderstack.products.domain import (
    Product,
    ProductNotFound,
    ReservationOutcome,
    ReserveStock,
    StockTaken,
    product_created_event,
    reservation_answer,
)
from orderstack.storage.types import utcnow
from orderstack.storage.uow import UnitOfWork


class ProductUoW(UnitOfWork, Protocol):
    """The unit of work of this service's use cases: its repository, plus the outbox."""

    products: Any


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
        """Store the product and emit ``product_created`` in the same transaction."""
        now = self._clock()
        async with self._uow_factory() as uow:
            product = await uow.products.add(name, price, qty, now)
            await uow.outbox.add([product_created_event(product, now)])
            uow.after_commit(lambda: self._cache.put(product.to_cache()))
            await uow.commit()
        return product

    async def get_product(self, product_id: int) -> Product:
        """Read through the cache. Raises ProductNotFound (also for a deleted product)."""
        cached = await self._lookups.submit(product_id)
        if cached is not None:
            if cached.deleted:
                raise ProductNotFound(product_id)
            hit = Product.from_cache(cached)
            if hit is not None:
                return hit
        async with self._uow_factory() as uow:
            product = await uow.products.get(product_id)
        if product is None:
            raise ProductNotFound(product_id)
        await self._cache.put(product.to_cache())
        return product

    async def list_products(self, limit: int, offset: int) -> tuple[list[Product], int]:
        async with self._uow_factory() as uow:
            page: tuple[list[Product], int] = await uow.products.page(limit, offset)
        return page

    async def update_product(self, product_id: int, changes: dict[str, Any]) -> Product:
        """Partial update of name / price / qty (a qty change is a restock or a correction).
        Raises ProductNotFound."""
        async with self._uow_factory() as uow:
            if changes and not await uow.products.update(product_id, changes, self._clock()):
                raise ProductNotFound(product_id)
            product = await uow.products.get(product_id)
            if product is None:
                raise ProductNotFound(product_id)
            uow.after_commit(lambda: self._cache.put(product.to_cache()))
            await uow.commit()
        return product

    async def delete_product(self, product_id: int) -> None:
        """Soft-delete; later orders for it fail. Raises ProductNotFound."""
        async with self._uow_factory() as uow:
            version = await uow.products.delete(product_id, self._clock())
            if version is None:
                raise ProductNotFound(product_id)
            tombstone = CachedProduct(id=product_id, version=version, deleted=True)
            uow.after_commit(lambda: self._cache.put(tombstone))
            await uow.commit()

    async def reserve_stock(self, uow: ProductUoW, requests: Sequence[ReserveStock]) -> None:
        """Take one unit per order inside the caller's transaction and write each answer
        to the outbox. Idempotent per order: an order already answered is skipped."""
        now = self._clock()
        answered = await uow.products.answered_orders([r.order_id for r in requests])
        todo: dict[int, ReserveStock] = {}
        for request in requests:
            if request.order_id not in answered:
                todo.setdefault(request.order_id, request)
        if not todo:
            return
        wanted = Counter(r.product_id for r in todo.values())
        taken: dict[int, StockTaken] = await uow.products.take_units(wanted, now)
        units = {product_id: t.units for product_id, t in taken.items()}
        # Within a product, the oldest orders get the units there are.
        outcomes: list[tuple[int, int, ReservationOutcome]] = []
        for request in sorted(todo.values(), key=lambda r: (r.product_id, r.order_id)):
            confirmed = units.get(request.product_id, 0) > 0
            if confirmed:
                units[request.product_id] -= 1
            outcome = ReservationOutcome.CONFIRMED if confirmed else ReservationOutcome.FAILED
            outcomes.append((request.order_id, request.product_id, outcome))
        await uow.products.record_reservations(outcomes, now)
        await uow.outbox.add([reservation_answer(o, r, now) for o, _, r in outcomes])
        if taken:
            entries = [t.product.to_cache() for t in taken.values()]
            uow.after_commit(lambda: self._cache.put(*entries))

"""The product service's use cases against fakes: products, the cache, taking stock."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.cache.port import CachedProduct
from orderstack.products.caching import cache_entry
from orderstack.products.domain import (
    NewProduct,
    Product,
    ProductNotFound,
    Reservation,
    ReservationOutcome,
    ReserveStock,
    StockLine,
)
from orderstack.products.events import FAILURE_REASON
from orderstack.products.service import ProductService
from tests.unit.fakes import START, Clock, FakeProductDatabase


async def reserve(
    db: FakeProductDatabase, service: ProductService, *requests: ReserveStock
) -> None:
    async with db.unit_of_work() as uow:
        await service.reserve_stock(uow, requests)
        await uow.commit()


def answers(db: FakeProductDatabase) -> dict[int, str]:
    """order id -> event name of the answers written to the outbox."""
    return {e.data["orderId"]: e.name for e in db.outbox.events if e.name.startswith("order.")}


# -- create, read, update, delete --------------------------------------------------------


async def test_create_product_writes_product_created_and_caches_it(
    product_service: ProductService, product_db: FakeProductDatabase, cache: InProcessProductCache
) -> None:
    product = await product_service.create_product("Smartphone", Decimal("699.99"), 100)

    assert product_db.products.rows == {product.id: product}
    assert (product.name, product.price, product.qty, product.version) == (
        "Smartphone",
        Decimal("699.99"),
        100,
        1,
    )
    assert product.created_at == product.updated_at == START
    [event] = product_db.outbox.events
    assert event.name == "product_created"
    assert event.data == {
        "id": product.id,
        "name": "Smartphone",
        "price": 699.99,
        "qty": 100,
        "timestamp": "2025-09-20T10:30:00Z",
    }
    assert (await cache.get_many([product.id]))[0] == cache_entry(product)


async def test_failed_create_writes_no_event_and_caches_nothing(
    product_service: ProductService, product_db: FakeProductDatabase, cache: InProcessProductCache
) -> None:
    product_db.commit_failures.append(RuntimeError("disk full"))

    with pytest.raises(RuntimeError):
        await product_service.create_product("Smartphone", Decimal(1), 1)

    assert product_db.products.rows == {}
    assert product_db.outbox.events == []
    assert (await cache.get_many([1]))[0] is None


async def test_get_product_reads_through_the_cache(
    product_service: ProductService, product_db: FakeProductDatabase, cache: InProcessProductCache
) -> None:
    async with product_db.unit_of_work() as uow:  # a product the cache has never seen
        (stored,) = await uow.products.add_many([NewProduct("Laptop", Decimal(1200), 5)], START)
        await uow.commit()
    assert (await cache.get_many([stored.id]))[0] is None

    assert await product_service.get_product(stored.id) == stored
    assert (await cache.get_many([stored.id]))[0] == cache_entry(stored)

    # The next read is served from the cache: a row changed behind the service's back
    # (never done by the service itself) is not seen.
    product_db.products.rows[stored.id] = Product(
        stored.id, "Changed", Decimal(1), 0, START, START, stored.version
    )
    assert await product_service.get_product(stored.id) == stored


async def test_get_unknown_product_raises_and_caches_nothing(
    product_service: ProductService, cache: InProcessProductCache
) -> None:
    with pytest.raises(ProductNotFound) as caught:
        await product_service.get_product(404)

    assert str(caught.value) == "Product 404 not found"
    assert (await cache.get_many([404]))[0] is None


async def test_incomplete_cache_entry_falls_back_to_the_database(
    product_service: ProductService, product_db: FakeProductDatabase, cache: InProcessProductCache
) -> None:
    product = await product_service.create_product("Desk", Decimal(300), 3)
    await cache.close()
    await cache.put(CachedProduct(id=product.id, version=product.version))  # no timestamps

    assert await product_service.get_product(product.id) == product


async def test_update_refreshes_cache_and_delete_leaves_a_tombstone(
    product_service: ProductService, product_db: FakeProductDatabase, cache: InProcessProductCache
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 10)

    updated = await product_service.update_product(product.id, {"price": Decimal(450), "qty": 7})

    assert (updated.price, updated.qty, updated.version) == (Decimal(450), 7, 2)
    assert product_db.products.rows[product.id] == updated
    assert (await cache.get_many([product.id]))[0] == cache_entry(updated)
    assert await product_service.get_product(product.id) == updated

    await product_service.delete_product(product.id)

    tombstone = (await cache.get_many([product.id]))[0]
    assert tombstone is not None
    assert tombstone.deleted
    assert tombstone.version == 3
    assert product_db.products.rows[product.id].version == 3
    assert product.id in product_db.products.deleted_at
    with pytest.raises(ProductNotFound):
        await product_service.get_product(product.id)


async def test_a_late_reader_cannot_put_a_deleted_product_back_in_the_cache(
    product_service: ProductService, cache: InProcessProductCache
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 10)
    await product_service.delete_product(product.id)

    await cache.put(cache_entry(product))  # a reader that loaded the row before the delete

    assert ((await cache.get_many([product.id]))[0]).deleted  # type: ignore[union-attr]
    with pytest.raises(ProductNotFound):
        await product_service.get_product(product.id)


async def test_update_of_one_field_keeps_the_others(
    product_service: ProductService, clock: Clock
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 10)
    later = clock.advance(60)

    updated = await product_service.update_product(product.id, {"name": "Phone 2"})

    assert (updated.name, updated.price, updated.qty) == ("Phone 2", Decimal(500), 10)
    assert updated.created_at == product.created_at
    assert updated.updated_at == later


async def test_update_without_changes_returns_the_product_unchanged(
    product_service: ProductService,
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 10)

    assert await product_service.update_product(product.id, {}) == product


async def test_update_of_unknown_or_deleted_product_raises_not_found(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 10)
    await product_service.delete_product(product.id)

    with pytest.raises(ProductNotFound):
        await product_service.update_product(product.id, {"qty": 5})
    with pytest.raises(ProductNotFound):
        await product_service.update_product(999, {"qty": 5})
    with pytest.raises(ProductNotFound):
        await product_service.update_product(999, {})

    assert product_db.products.rows[product.id].qty == 10


async def test_delete_twice_raises_not_found_the_second_time(
    product_service: ProductService,
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 10)
    await product_service.delete_product(product.id)

    with pytest.raises(ProductNotFound):
        await product_service.delete_product(product.id)


async def test_list_products_pages_over_live_products_only(
    product_service: ProductService,
) -> None:
    made = [await product_service.create_product(f"p{i}", Decimal(1), 1) for i in range(5)]
    await product_service.delete_product(made[1].id)

    page, total = await product_service.list_products(limit=2, offset=1)

    assert total == 4
    assert [p.id for p in page] == [made[2].id, made[3].id]


# -- taking stock ------------------------------------------------------------------------


async def test_reserve_stock_takes_one_unit_and_confirms(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 3)

    await reserve(product_db, product_service, ReserveStock(order_id=10, product_id=product.id))

    assert product_db.products.rows[product.id].qty == 2
    assert product_db.products.rows[product.id].version == product.version + 1
    [answer] = product_db.outbox.named("order.qty_confirmed")
    assert answer.data == {
        "orderId": 10,
        "items": [{"productId": product.id, "quantity": 1, "unitPrice": 500, "lineTotal": 500}],
        "totalPrice": 500,
        "timestamp": "2025-09-20T10:30:00Z",
    }
    priced = (StockLine(product.id, 1, Decimal(500)),)
    assert product_db.products.reservations == {
        10: Reservation(10, None, 1, ReservationOutcome.CONFIRMED, priced)
    }


async def test_out_of_stock_answers_failed(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 0)

    await reserve(product_db, product_service, ReserveStock(order_id=10, product_id=product.id))

    assert product_db.products.rows[product.id].qty == 0
    [answer] = product_db.outbox.named("order.qty_failed")
    assert answer.data == {
        "orderId": 10,
        "reason": FAILURE_REASON,
        "lines": [{"productId": product.id, "requested": 1, "available": 0}],
        "totalPrice": 500,
        "timestamp": "2025-09-20T10:30:00Z",
    }
    assert product_db.outbox.named("order.qty_confirmed") == []


async def test_unknown_or_deleted_product_answers_failed(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    deleted = await product_service.create_product("Gone", Decimal(5), 9)
    await product_service.delete_product(deleted.id)

    await reserve(
        product_db,
        product_service,
        ReserveStock(order_id=1, product_id=deleted.id),
        ReserveStock(order_id=2, product_id=12345),
    )

    assert answers(product_db) == {1: "order.qty_failed", 2: "order.qty_failed"}
    assert product_db.products.rows[deleted.id].qty == 9


async def test_order_already_answered_takes_no_stock_again_and_resends_its_answer(
    product_service: ProductService, product_db: FakeProductDatabase, clock: Clock
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)
    await reserve(product_db, product_service, ReserveStock(order_id=10, product_id=product.id))
    [first] = product_db.outbox.named("order.qty_confirmed")
    clock.advance(600)

    await reserve(product_db, product_service, ReserveStock(order_id=10, product_id=product.id))

    assert product_db.products.rows[product.id].qty == 4
    assert product_db.products.rows[product.id].version == product.version + 1
    assert product_db.products.confirmed_units(product.id) == 1
    [_, again] = product_db.outbox.named("order.qty_confirmed")
    assert again.id != first.id
    assert again.data == {**first.data, "timestamp": "2025-09-20T10:40:00Z"}
    assert again.data["items"] == [
        {"productId": product.id, "quantity": 1, "unitPrice": 500, "lineTotal": 500}
    ]


async def test_same_order_twice_in_one_batch_takes_one_unit(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)

    await reserve(
        product_db,
        product_service,
        ReserveStock(order_id=10, product_id=product.id),
        ReserveStock(order_id=10, product_id=product.id),
    )

    assert product_db.products.rows[product.id].qty == 4
    assert len(product_db.outbox.events) == 2  # product_created + one answer


async def test_reservations_never_drive_stock_negative(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    scarce = await product_service.create_product("Scarce", Decimal(1), 3)
    other = await product_service.create_product("Other", Decimal(1), 10)
    requests = [
        ReserveStock(order_id=i, product_id=scarce.id if i % 3 else other.id) for i in range(1, 31)
    ]
    random.Random(7).shuffle(requests)

    # Several batches, one of them repeating an earlier one (a redelivery).
    for batch in (requests[:10], requests[10:20], requests[:10], requests[20:]):
        await reserve(product_db, product_service, *batch)

    repo = product_db.products
    assert repo.rows[scarce.id].qty == 0
    assert repo.confirmed_units(scarce.id) == 3
    assert repo.rows[other.id].qty == 0
    assert repo.confirmed_units(other.id) == 10
    confirmed = [o for o, name in answers(product_db).items() if name == "order.qty_confirmed"]
    assert len(confirmed) == 13
    assert len(answers(product_db)) == 30  # every order answered
    # ... once, and the ten of the repeated batch once more, with the same outcome.
    assert len([e for e in product_db.outbox.events if e.name.startswith("order.")]) == 40


async def test_the_last_units_go_to_the_oldest_orders_of_a_batch(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Scarce", Decimal(1), 2)

    await reserve(
        product_db,
        product_service,
        *(ReserveStock(order_id=i, product_id=product.id) for i in (7, 3, 9, 5)),
    )

    assert answers(product_db) == {
        3: "order.qty_confirmed",
        5: "order.qty_confirmed",
        7: "order.qty_failed",
        9: "order.qty_failed",
    }
    assert product_db.products.rows[product.id].qty == 0
    assert product_db.products.rows[product.id].version == product.version + 1


async def test_restock_lets_later_orders_confirm(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 1)
    await reserve(
        product_db, product_service, ReserveStock(1, product.id), ReserveStock(2, product.id)
    )
    await product_service.update_product(product.id, {"qty": 1})

    await reserve(product_db, product_service, ReserveStock(3, product.id))

    assert answers(product_db) == {
        1: "order.qty_confirmed",
        2: "order.qty_failed",
        3: "order.qty_confirmed",
    }
    repo = product_db.products
    # units confirmed == starting stock + restocks - current stock
    assert repo.confirmed_units(product.id) == 1 + 1 - repo.rows[product.id].qty


async def test_taking_stock_refreshes_the_cache(
    product_service: ProductService, product_db: FakeProductDatabase, cache: InProcessProductCache
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)
    assert (await product_service.get_product(product.id)).qty == 5

    await reserve(product_db, product_service, ReserveStock(order_id=1, product_id=product.id))

    assert (await product_service.get_product(product.id)).qty == 4
    cached = (await cache.get_many([product.id]))[0]
    assert cached is not None
    assert (cached.qty, cached.version) == (4, product.version + 1)


async def test_a_rolled_back_reservation_leaves_stock_cache_and_outbox_unchanged(
    product_service: ProductService, product_db: FakeProductDatabase, cache: InProcessProductCache
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)
    events_before = list(product_db.outbox.events)
    product_db.commit_failures.append(RuntimeError("lost connection"))

    with pytest.raises(RuntimeError):
        await reserve(product_db, product_service, ReserveStock(1, product.id))

    assert product_db.products.rows[product.id].qty == 5
    assert product_db.products.reservations == {}
    assert product_db.outbox.events == events_before
    assert ((await cache.get_many([product.id]))[0]).qty == 5  # type: ignore[union-attr]

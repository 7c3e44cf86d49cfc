"""The stock ledger, relative stock adjustments, versioned updates (If-Match) and re-sent
answers, against fakes of the ports."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from decimal import Decimal

import pytest

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.products.caching import cache_entry
from orderstack.products.domain import (
    MAX_QTY,
    CancelReservation,
    InsufficientStock,
    ProductNotFound,
    ReserveStock,
    StockAdjustment,
    StockLimitExceeded,
    VersionMismatch,
)
from orderstack.products.events import FAILURE_REASON
from orderstack.products.service import ProductService
from tests.unit.fakes import Clock, FakeProductDatabase


async def reserve(
    db: FakeProductDatabase, service: ProductService, *requests: ReserveStock
) -> None:
    async with db.unit_of_work() as uow:
        await service.reserve_stock(uow, requests)
        await uow.commit()


def ledger(db: FakeProductDatabase, product_id: int) -> list[tuple[int, str, int]]:
    """(delta, reason, qty_after) of the product's ledger entries, in order."""
    return [
        (a.delta, a.reason, a.qty_after)
        for a in db.products.adjustments
        if a.product_id == product_id
    ]


def assert_ledger_balances(db: FakeProductDatabase, product_id: int) -> None:
    """units confirmed to orders = sum(adjustments) - qty"""
    repo = db.products
    assert repo.confirmed_units(product_id) == (
        repo.adjusted_units(product_id) - repo.rows[product_id].qty
    )


# -- the ledger --------------------------------------------------------------------------


async def test_creating_a_product_opens_its_ledger(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 7)
    empty = await product_service.create_product("Empty", Decimal(5), 0)

    assert ledger(product_db, product.id) == [(7, "created", 7)]
    assert ledger(product_db, empty.id) == [(0, "created", 0)]


async def test_a_failed_create_leaves_no_ledger_entry(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product_db.commit_failures.append(RuntimeError("disk full"))

    with pytest.raises(RuntimeError):
        await product_service.create_product("Phone", Decimal(500), 7)

    assert product_db.products.adjustments == []


# -- adjust_stock ------------------------------------------------------------------------


async def test_adjustment_adds_units_records_them_and_refreshes_the_cache(
    product_service: ProductService,
    product_db: FakeProductDatabase,
    cache: InProcessProductCache,
    clock: Clock,
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 3)
    later = clock.advance(60)

    adjustment, after = await product_service.adjust_stock(product.id, 5, "restock")

    assert adjustment == StockAdjustment(adjustment.id, product.id, 5, "restock", 8, later)
    assert (after.qty, after.version, after.updated_at) == (8, product.version + 1, later)
    assert product_db.products.rows[product.id] == after
    assert ledger(product_db, product.id) == [(3, "created", 3), (5, "restock", 8)]
    assert (await cache.get_many([product.id]))[0] == cache_entry(after)


async def test_adjustment_can_take_the_stock_down_to_zero(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 3)

    adjustment, after = await product_service.adjust_stock(product.id, -3, "damaged")

    assert (adjustment.qty_after, after.qty) == (0, 0)
    assert_ledger_balances(product_db, product.id)


async def test_adjustment_below_zero_is_refused_and_changes_nothing(
    product_service: ProductService, product_db: FakeProductDatabase, cache: InProcessProductCache
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 3)

    with pytest.raises(InsufficientStock) as refused:
        await product_service.adjust_stock(product.id, -4, "damaged")

    assert (refused.value.qty, refused.value.delta) == (3, -4)
    assert product_db.products.rows[product.id] == product
    assert ledger(product_db, product.id) == [(3, "created", 3)]
    assert (await cache.get_many([product.id]))[0] == cache_entry(product)


async def test_adjustment_above_the_largest_stock_is_refused(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), MAX_QTY - 1)

    with pytest.raises(StockLimitExceeded):
        await product_service.adjust_stock(product.id, 2, "restock")

    assert product_db.products.rows[product.id] == product


async def test_adjustment_of_an_unknown_or_deleted_product_raises_not_found(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 3)
    await product_service.delete_product(product.id)

    for product_id in (product.id, 999):
        with pytest.raises(ProductNotFound):
            await product_service.adjust_stock(product_id, 1, "restock")

    assert ledger(product_db, product.id) == [(3, "created", 3)]


async def test_adjustment_keeps_units_taken_by_orders_meanwhile(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    """Relative, unlike a PATCH of qty: a sale between reading and adjusting is kept."""
    product = await product_service.create_product("Phone", Decimal(500), 5)
    await reserve(product_db, product_service, ReserveStock(1, product.id))

    _, after = await product_service.adjust_stock(product.id, 10, "restock")

    assert after.qty == 14
    assert_ledger_balances(product_db, product.id)


# -- update_product: the ledger and If-Match ---------------------------------------------


async def test_patch_of_qty_records_the_difference_in_the_ledger(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)
    await reserve(product_db, product_service, ReserveStock(1, product.id))

    await product_service.update_product(product.id, {"qty": 10})
    await product_service.update_product(product.id, {"qty": 2, "name": "Phone 2"})

    assert ledger(product_db, product.id) == [
        (5, "created", 5),
        (6, "patch", 10),
        (-8, "patch", 2),
    ]
    assert_ledger_balances(product_db, product.id)


async def test_patch_that_leaves_qty_as_it_was_records_nothing(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)

    await product_service.update_product(product.id, {"qty": 5})
    await product_service.update_product(product.id, {"price": Decimal(450)})

    assert ledger(product_db, product.id) == [(5, "created", 5)]


async def test_update_at_the_expected_version_applies(
    product_service: ProductService,
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)

    updated = await product_service.update_product(
        product.id, {"qty": 9}, expected_versions=[product.version]
    )

    assert (updated.qty, updated.version) == (9, product.version + 1)


@pytest.mark.parametrize("changes", [{"qty": 1}, {"name": "Other"}, {}])
async def test_update_at_a_stale_version_is_refused_and_changes_nothing(
    product_service: ProductService,
    product_db: FakeProductDatabase,
    changes: dict[str, object],
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)
    await reserve(product_db, product_service, ReserveStock(1, product.id))  # version 2
    current = product_db.products.rows[product.id]

    with pytest.raises(VersionMismatch) as refused:
        await product_service.update_product(product.id, changes, expected_versions=[1])

    assert refused.value.current_version == current.version == 2
    assert product_db.products.rows[product.id] == current
    assert ledger(product_db, product.id) == [(5, "created", 5)]


async def test_update_of_a_deleted_product_is_not_found_whatever_the_version(
    product_service: ProductService,
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 5)
    await product_service.delete_product(product.id)

    with pytest.raises(ProductNotFound):
        await product_service.update_product(product.id, {"qty": 1}, expected_versions=[2])


# -- answers sent again ------------------------------------------------------------------


async def test_failed_order_asked_again_gets_its_failure_again(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Empty", Decimal(5), 0)
    await reserve(product_db, product_service, ReserveStock(3, product.id))
    # Restocked since: the order must still not take a unit; its answer stays "failed".
    await product_service.adjust_stock(product.id, 4, "restock")

    await reserve(product_db, product_service, ReserveStock(3, product.id))

    failures = product_db.outbox.named("order.qty_failed")
    assert [f.data for f in failures] == [
        {
            "orderId": 3,
            "reason": FAILURE_REASON,
            "lines": [{"productId": product.id, "requested": 1, "available": 0}],
            "totalPrice": 5,
            "timestamp": "2025-09-20T10:30:00Z",
        }
    ] * 2
    assert failures[0].id != failures[1].id
    assert product_db.outbox.named("order.qty_confirmed") == []
    assert product_db.products.rows[product.id].qty == 4


async def test_answered_order_in_a_batch_with_new_ones_is_answered_again_once(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 2)
    await reserve(product_db, product_service, ReserveStock(1, product.id))

    await reserve(
        product_db,
        product_service,
        ReserveStock(1, product.id),
        ReserveStock(2, product.id),
        ReserveStock(1, product.id),
        ReserveStock(3, product.id),
    )

    confirmed = [e.data["orderId"] for e in product_db.outbox.named("order.qty_confirmed")]
    failed = [e.data["orderId"] for e in product_db.outbox.named("order.qty_failed")]
    assert sorted(confirmed) == [1, 1, 2]
    assert failed == [3]
    assert product_db.products.rows[product.id].qty == 0
    assert product_db.products.confirmed_units(product.id) == 2


async def test_a_rolled_back_resend_writes_nothing(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 2)
    await reserve(product_db, product_service, ReserveStock(1, product.id))
    events_before = list(product_db.outbox.events)
    product_db.commit_failures.append(RuntimeError("lost connection"))

    with pytest.raises(RuntimeError):
        await reserve(product_db, product_service, ReserveStock(1, product.id))

    assert product_db.outbox.events == events_before


async def test_ledger_balances_through_sales_adjustments_and_patches(
    product_service: ProductService, product_db: FakeProductDatabase, clock: Clock
) -> None:
    product = await product_service.create_product("Phone", Decimal(500), 4)
    for step in range(12):
        clock.advance(1)
        await reserve(product_db, product_service, ReserveStock(step + 1, product.id))
        if step % 3 == 0:
            await product_service.adjust_stock(product.id, 2, "restock")
        if step % 4 == 1:
            await product_service.update_product(product.id, {"qty": step})
        if step % 5 == 2:
            with contextlib.suppress(InsufficientStock):
                await product_service.adjust_stock(product.id, -3, "shrinkage")
        assert_ledger_balances(product_db, product.id)
        assert product_db.products.rows[product.id].qty >= 0


async def test_units_confirmed_orders_hold_count_toward_the_largest_stock(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    # Stock + units held by confirmed orders never exceeds MAX_QTY, so a cancel can always
    # give its units back: a restock or a PATCH that would leave no room is refused.
    product = await product_service.create_product("Bulk", Decimal(1), MAX_QTY)
    await reserve(product_db, product_service, ReserveStock(1, product.id, 5))

    with pytest.raises(StockLimitExceeded) as refused:
        await product_service.adjust_stock(product.id, 1, "restock")
    assert refused.value.held == 5
    with pytest.raises(StockLimitExceeded):
        await product_service.update_product(product.id, {"qty": MAX_QTY - 4})
    await product_service.adjust_stock(product.id, -2, "correction")
    restocked, _ = await product_service.adjust_stock(product.id, 2, "restock")  # room for 2
    patched = await product_service.update_product(product.id, {"qty": MAX_QTY - 5})
    async with product_db.unit_of_work() as uow:
        await product_service.cancel_reservations(uow, [CancelReservation(1, product.id, 5)])
        await uow.commit()

    assert (restocked.qty_after, patched.qty) == (MAX_QTY - 5, MAX_QTY - 5)
    assert product_db.products.rows[product.id].qty == MAX_QTY
    assert_ledger_balances(product_db, product.id)


async def test_a_product_above_the_limit_may_still_be_corrected_down_or_left_as_it_is(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    # Restocked to the limit while orders held units (before the rule): removing units,
    # or a PATCH that keeps the qty, is still allowed; adding one is not.
    product = await product_service.create_product("Bulk", Decimal(1), MAX_QTY)
    await reserve(product_db, product_service, ReserveStock(1, product.id, 5))
    product_db.products.rows[product.id] = replace(
        product_db.products.rows[product.id], qty=MAX_QTY
    )

    await product_service.adjust_stock(product.id, -1, "correction")
    kept = await product_service.update_product(product.id, {"qty": MAX_QTY - 1, "name": "B"})
    with pytest.raises(StockLimitExceeded):
        await product_service.adjust_stock(product.id, 1, "restock")

    assert (kept.qty, kept.name) == (MAX_QTY - 1, "B")


async def test_a_stale_if_match_on_a_qty_patch_is_a_version_mismatch_before_the_limit(
    product_service: ProductService, product_db: FakeProductDatabase
) -> None:
    product = await product_service.create_product("Bulk", Decimal(1), MAX_QTY)
    await reserve(product_db, product_service, ReserveStock(1, product.id, 5))

    with pytest.raises(VersionMismatch):
        await product_service.update_product(product.id, {"qty": MAX_QTY}, [product.version])

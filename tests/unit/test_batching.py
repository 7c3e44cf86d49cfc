"""Group commit: concurrent submissions share transactions, and each caller gets its own
answer, also when a batch fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

import asyncmy.errors
import pytest
from sqlalchemy.exc import OperationalError

from orderstack.batching import Batcher
from orderstack.orders.domain import OrderStatus
from orderstack.orders.service import OrderService
from tests.unit.fakes import FakeCatalog, FakeOrderDatabase


class Store:
    """A write function that records its batches and fails as told."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.rejected: set[int] = set()  # items whose batch fails, not transiently
        self.outage = False
        self.dropped_connections = 0  # the next writes that meet a connection the server killed

    async def write(self, items: Sequence[int]) -> list[str]:
        await asyncio.sleep(0.01)  # a commit takes time; others queue meanwhile
        if self.outage:
            raise OperationalError(
                "SELECT 1", {}, asyncmy.errors.OperationalError(1205, "Lock wait timeout")
            )
        if self.dropped_connections:
            self.dropped_connections -= 1
            raise OperationalError(
                "SELECT 1", {}, asyncmy.errors.OperationalError(2006, "server has gone away")
            )
        if self.rejected & set(items):
            raise ValueError(f"bad item in {list(items)}")
        self.batches.append(list(items))
        return [f"stored {i}" for i in items]


async def test_concurrent_submissions_share_batches_and_each_gets_its_own_result() -> None:
    store = Store()
    group: Batcher[int, str] = Batcher(store.write, max_batch=50, writers=2)

    results = await asyncio.gather(*(group.submit(i) for i in range(200)))

    assert results == [f"stored {i}" for i in range(200)]
    assert sorted(i for batch in store.batches for i in batch) == list(range(200))
    assert len(store.batches) < 20
    assert max(len(b) for b in store.batches) <= 50


async def test_a_lone_submission_is_written_at_once() -> None:
    store = Store()
    group: Batcher[int, str] = Batcher(store.write)

    assert await group.submit(7) == "stored 7"
    assert store.batches == [[7]]


@pytest.mark.parametrize("writers", [1, 2])
async def test_a_caller_submitting_again_right_after_its_answer_is_served(writers: int) -> None:
    """The answer wakes the caller before the writer's task is over; the next submission
    must not wait for a writer that has already stopped."""
    store = Store()
    group: Batcher[int, str] = Batcher(store.write, writers=writers)

    async def one_after_another() -> list[str]:
        return [await group.submit(i) for i in range(5)]

    assert await asyncio.wait_for(one_after_another(), 2) == [f"stored {i}" for i in range(5)]


async def test_one_bad_item_fails_only_its_own_caller() -> None:
    store = Store()
    store.rejected = {13}
    group: Batcher[int, str] = Batcher(store.write, writers=1)

    results = await asyncio.gather(*(group.submit(i) for i in range(30)), return_exceptions=True)

    assert isinstance(results[13], ValueError)
    assert [r for i, r in enumerate(results) if i != 13] == [
        f"stored {i}" for i in range(30) if i != 13
    ]
    assert 13 not in {i for batch in store.batches for i in batch}


async def test_a_transient_failure_is_every_callers_answer_without_retrying_each() -> None:
    store = Store()
    store.outage = True
    calls = 0
    original = store.write

    async def counted(items: Sequence[int]) -> list[str]:
        nonlocal calls
        calls += 1
        return await original(items)

    group: Batcher[int, str] = Batcher(counted, writers=1)
    first = asyncio.ensure_future(group.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(group.submit(i)) for i in range(1, 20)]

    results = await asyncio.gather(first, *rest, return_exceptions=True)

    assert all(isinstance(r, OperationalError) for r in results)
    assert calls == 2  # the first alone, then the other 19 together: never one by one


async def test_a_connection_the_server_dropped_is_written_again_once() -> None:
    store = Store()
    store.dropped_connections = 1
    group: Batcher[int, str] = Batcher(store.write, writers=1)

    assert await group.submit(7) == "stored 7"
    assert store.batches == [[7]]

    store.dropped_connections = 2  # dropped again on the second try: the caller hears of it
    with pytest.raises(OperationalError):
        await group.submit(8)


async def test_concurrent_orders_share_transactions_and_each_has_its_event(
    order_db: FakeOrderDatabase, catalog: FakeCatalog
) -> None:
    service = OrderService(order_db.unit_of_work, catalog, write_batch=25)

    created = await asyncio.gather(
        *(service.create_order(1 + i % 2, Decimal(i)) for i in range(100))
    )

    orders = [order for order, _ in created]
    assert len({o.id for o in orders}) == 100
    assert all(o.status is OrderStatus.PENDING for o in orders)
    assert [o.total_price for o in orders] == [Decimal(i) for i in range(100)]
    events = order_db.outbox.named("order.created")
    assert sorted(e.data["orderId"] for e in events) == sorted(o.id for o in orders)
    assert order_db.commits < 100


async def test_twins_with_one_idempotency_key_in_a_shared_batch_cost_no_other_order(
    order_db: FakeOrderDatabase, catalog: FakeCatalog
) -> None:
    service = OrderService(order_db.unit_of_work, catalog)

    outcomes = await asyncio.gather(
        service.create_order(2, Decimal(1)),
        service.create_order(1, Decimal(10), request_id="n"),
        service.create_order(1, Decimal(10), request_id="n"),
        service.create_order(2, Decimal(3)),
    )

    (a, a_new), (twin, twin_new), (other_twin, other_new), (b, b_new) = outcomes
    assert twin == other_twin and [twin_new, other_new].count(True) == 1
    assert a_new and b_new and (a.total_price, b.total_price) == (Decimal(1), Decimal(3))
    assert len(order_db.orders.rows) == 3
    assert len(order_db.outbox.named("order.created")) == 3


@pytest.mark.parametrize("batch", [1, 3])
async def test_cancelled_caller_does_not_stop_the_others(batch: int) -> None:
    store = Store()
    group: Batcher[int, str] = Batcher(store.write, max_batch=batch, writers=1)
    tasks = [asyncio.ensure_future(group.submit(i)) for i in range(6)]
    await asyncio.sleep(0)
    tasks[4].cancel()

    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[4], asyncio.CancelledError)
    assert [results[i] for i in (0, 1, 2, 3, 5)] == [f"stored {i}" for i in (0, 1, 2, 3, 5)]

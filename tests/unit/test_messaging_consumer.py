"""The consumer loop: decode, claim in the inbox, apply, commit, then ack or dead-letter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from typing import Any

import asyncmy.errors
import orjson
import pytest
from sqlalchemy.exc import OperationalError

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.consumer import ATTEMPTS_PER_MESSAGE, EventConsumer
from orderstack.messaging.envelope import Event
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE
from orderstack.orders.domain import OrderStatus
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products.domain import Product
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService
from tests.unit.fakes import (
    Clock,
    FakeDelivery,
    FakeInbox,
    FakeOrderDatabase,
    FakeProductDatabase,
    FakeProductRepository,
    integrity_error,
)

BROKEN_PRODUCT = 13


def order_created(order_id: int, product_id: int) -> Event:
    return Event("order.created", {"orderId": order_id, "productId": product_id})


def blip() -> OperationalError:
    return OperationalError(
        "SELECT 1", {}, asyncmy.errors.OperationalError(2006, "server has gone away")
    )


def outcomes(deliveries: Sequence[FakeDelivery]) -> list[str | None]:
    return [d.outcome for d in deliveries]


def answered(db: FakeProductDatabase) -> list[int]:
    return sorted(e.data["orderId"] for e in db.outbox.events if e.name.startswith("order.qty"))


def stock_consumer(db: FakeProductDatabase, service: ProductService) -> EventConsumer:
    return EventConsumer(
        InProcessBus(), PRODUCT_SERVICE_QUEUE, db.unit_of_work, OrderStockHandler(service)
    )


@pytest.fixture
async def product_id(product_service: ProductService) -> int:
    product = await product_service.create_product("Phone", Decimal(500), 100)
    return product.id


@pytest.fixture
def consumer(product_db: FakeProductDatabase, product_service: ProductService) -> EventConsumer:
    return stock_consumer(product_db, product_service)


# -- the happy path ----------------------------------------------------------------------


async def test_batch_is_applied_in_one_transaction_then_acked(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    events = [order_created(i, product_id) for i in (1, 2, 3)]
    deliveries = [FakeDelivery.of(e) for e in events]
    commits_before = product_db.commits

    await consumer.process(deliveries)

    assert outcomes(deliveries) == ["ack"] * 3
    assert product_db.commits == commits_before + 1
    assert product_db.products.rows[product_id].qty == 97
    assert answered(product_db) == [1, 2, 3]
    assert {e.id for e in events} <= set(product_db.inbox.seen)


async def test_ack_comes_only_after_the_transaction_committed(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    event = order_created(1, product_id)
    seen_at_ack: list[tuple[bool, bool, int]] = []

    def check(_: str) -> None:
        seen_at_ack.append(
            (
                event.id in product_db.inbox.seen,
                product_db.lock.locked(),  # a transaction still open?
                product_db.products.rows[product_id].qty,
            )
        )

    delivery = FakeDelivery.of(event)
    delivery.on_settle = check
    await consumer.process([delivery])

    assert seen_at_ack == [(True, False, 99)]


# -- malformed messages ------------------------------------------------------------------


async def test_malformed_message_is_dead_lettered_while_the_rest_are_acked(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    good = [order_created(1, product_id), order_created(2, product_id)]
    deliveries = [
        FakeDelivery.of(good[0]),
        FakeDelivery(b"not json", "bad-1", "order.created"),
        FakeDelivery(orjson.dumps({"orderId": "x", "productId": 1}), "bad-2", "order.created"),
        FakeDelivery(orjson.dumps({"orderId": 3, "productId": 1}), "bad-3", "order.bogus"),
        FakeDelivery(b"[]", "bad-4", "order.created"),
        FakeDelivery.of(good[1]),
    ]

    await consumer.process(deliveries)

    assert outcomes(deliveries) == ["ack"] + ["dead_letter"] * 4 + ["ack"]
    assert consumer.dead_lettered == 4
    assert product_db.products.rows[product_id].qty == 98
    assert answered(product_db) == [1, 2]
    assert not {"bad-1", "bad-2", "bad-3", "bad-4"} & set(product_db.inbox.seen)


async def test_batch_of_only_malformed_messages_commits_nothing(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    commits_before = product_db.commits
    deliveries = [FakeDelivery(b"{", "m1", "order.created"), FakeDelivery(b"1", "m2", None)]

    await consumer.process(deliveries)

    assert outcomes(deliveries) == ["dead_letter", "dead_letter"]
    assert product_db.commits == commits_before


# -- duplicates --------------------------------------------------------------------------


async def test_duplicate_message_id_in_one_batch_is_applied_once(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    event = order_created(1, product_id)
    deliveries = [FakeDelivery.of(event), FakeDelivery.of(event)]

    await consumer.process(deliveries)

    assert outcomes(deliveries) == ["ack", "ack"]
    assert product_db.products.rows[product_id].qty == 99
    assert answered(product_db) == [1]


async def test_redelivery_in_a_later_batch_changes_nothing(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    event = order_created(1, product_id)
    await consumer.process([FakeDelivery.of(event)])
    events_before = list(product_db.outbox.events)

    redelivered = FakeDelivery.of(event)
    await consumer.process([redelivered])

    assert redelivered.outcome == "ack"
    assert product_db.products.rows[product_id].qty == 99
    assert product_db.outbox.events == events_before


async def test_seed_message_without_id_redelivered_changes_nothing(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    payload = {"orderId": 1, "productId": product_id}
    body = orjson.dumps({"pattern": "order.created", "data": payload})

    await consumer.process([FakeDelivery(body, None, "order.created")])
    await consumer.process([FakeDelivery(body, None, "order.created")])

    assert product_db.products.rows[product_id].qty == 99
    assert answered(product_db) == [1]


async def test_same_order_under_two_event_ids_takes_stock_once(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    await consumer.process([FakeDelivery.of(order_created(1, product_id))])
    await consumer.process([FakeDelivery.of(order_created(1, product_id))])

    assert product_db.products.rows[product_id].qty == 99
    # The second one gets the recorded answer again (it heals an answer that was lost).
    assert answered(product_db) == [1, 1]


# -- failures ----------------------------------------------------------------------------


async def test_transient_error_is_retried_and_then_succeeds(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    deliveries = [FakeDelivery.of(order_created(i, product_id)) for i in (1, 2)]
    product_db.commit_failures.extend([blip(), blip()])

    await consumer.process(deliveries)

    assert product_db.commit_failures == []  # both failed attempts happened
    assert outcomes(deliveries) == ["ack", "ack"]
    assert product_db.products.rows[product_id].qty == 98  # taken once, not three times
    assert answered(product_db) == [1, 2]
    assert consumer.dead_lettered == 0


async def test_transient_errors_never_dead_letter_an_order(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    delivery = FakeDelivery.of(order_created(1, product_id))
    product_db.commit_failures.extend([blip() for _ in range(ATTEMPTS_PER_MESSAGE + 1)])

    await consumer.process([delivery])

    assert delivery.outcome == "ack"
    assert answered(product_db) == [1]


class RepositoryWithACorruptRow(FakeProductRepository):
    """Taking stock of BROKEN_PRODUCT fails every time, and not because of the database."""

    async def lock_many(self, product_ids: Sequence[int]) -> dict[int, Product]:
        if BROKEN_PRODUCT in product_ids:
            raise ValueError("corrupt row")
        return await super().lock_many(product_ids)


async def test_persistent_error_dead_letters_only_that_message(clock: Clock) -> None:
    db = FakeProductDatabase(products=RepositoryWithACorruptRow())
    service = ProductService(db.unit_of_work, InProcessProductCache(), clock)
    product = await service.create_product("Phone", Decimal(1), 10)
    consumer = stock_consumer(db, service)
    poison = order_created(2, BROKEN_PRODUCT)
    deliveries = [
        FakeDelivery.of(order_created(1, product.id)),
        FakeDelivery.of(poison),
        FakeDelivery.of(order_created(3, product.id)),
    ]

    await consumer.process(deliveries)

    assert outcomes(deliveries) == ["ack", "dead_letter", "ack"]
    assert db.products.rows[product.id].qty == 8
    assert answered(db) == [1, 3]
    assert poison.id not in db.inbox.seen  # a re-drive from the dead-letter queue can retry it


async def test_message_failing_on_every_attempt_is_dead_lettered_and_nothing_commits(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    deliveries = [FakeDelivery.of(order_created(i, product_id)) for i in (1, 2)]
    commits_before = product_db.commits
    # the whole batch once, then each message ATTEMPTS_PER_MESSAGE times
    product_db.commit_failures.extend(
        [ValueError("bug")] * (1 + ATTEMPTS_PER_MESSAGE * len(deliveries))
    )

    await consumer.process(deliveries)

    assert outcomes(deliveries) == ["dead_letter", "dead_letter"]
    assert product_db.commits == commits_before
    assert product_db.products.rows[product_id].qty == 100
    assert answered(product_db) == []


async def test_message_failing_fewer_times_than_the_limit_is_applied(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    delivery = FakeDelivery.of(order_created(1, product_id))
    product_db.commit_failures.extend([ValueError("flaky")] * ATTEMPTS_PER_MESSAGE)

    await consumer.process([delivery])

    assert delivery.outcome == "ack"
    assert answered(product_db) == [1]


class InboxLosingARace(FakeInbox):
    """Another replica claims ``raced_id`` and commits while our claim is in flight: our
    insert fails on the primary key, and from then on the id is seen."""

    def __init__(self, raced_id: str) -> None:
        super().__init__()
        self._raced_id = raced_id
        self.claimed_elsewhere: set[str] = set()

    async def claim(self, events: Sequence[Event]) -> list[Event]:
        if not self.claimed_elsewhere and any(e.id == self._raced_id for e in events):
            self.claimed_elsewhere.add(self._raced_id)
            raise integrity_error("duplicate products_inbox.event_id")
        return await super().claim([e for e in events if e.id not in self.claimed_elsewhere])


async def test_claim_lost_to_another_replica_is_acked_without_applying_twice(
    clock: Clock,
) -> None:
    raced = order_created(2, 1)
    db = FakeProductDatabase(inbox=InboxLosingARace(raced.id))
    service = ProductService(db.unit_of_work, InProcessProductCache(), clock)
    product = await service.create_product("Phone", Decimal(1), 10)
    deliveries = [
        FakeDelivery.of(order_created(1, product.id)),
        FakeDelivery.of(raced),
        FakeDelivery.of(order_created(3, product.id)),
    ]

    await stock_consumer(db, service).process(deliveries)

    assert outcomes(deliveries) == ["ack", "ack", "ack"]
    assert db.products.rows[product.id].qty == 8  # the other replica took order 2's unit
    assert answered(db) == [1, 3]


async def test_failed_ack_does_not_stop_the_others(
    consumer: EventConsumer, product_db: FakeProductDatabase, product_id: int
) -> None:
    class LostChannelDelivery(FakeDelivery):
        async def ack(self) -> None:
            raise ConnectionError("channel closed")

    event = order_created(1, product_id)
    lost = LostChannelDelivery(FakeDelivery.of(event).body, event.id, event.name)
    fine = FakeDelivery.of(order_created(2, product_id))

    await consumer.process([lost, fine])

    assert fine.outcome == "ack"
    assert answered(product_db) == [1, 2]  # the broker redelivers `lost`; the inbox absorbs it


# -- the order service's consumer --------------------------------------------------------


@pytest.fixture
def answer_consumer(order_db: FakeOrderDatabase, order_service: OrderService) -> EventConsumer:
    return EventConsumer(
        InProcessBus(),
        ORDER_SERVICE_QUEUE,
        order_db.unit_of_work,
        OrderEventsHandler(order_service),
    )


async def test_second_delivery_of_an_answer_changes_nothing(
    answer_consumer: EventConsumer, order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(1, Decimal(10))
    confirmed = Event("order.qty_confirmed", {"orderId": order.id})
    contradicting = Event("order.qty_failed", {"orderId": order.id, "reason": "late"})

    await answer_consumer.process([FakeDelivery.of(confirmed)])
    later = [FakeDelivery.of(confirmed), FakeDelivery.of(contradicting)]
    await answer_consumer.process(later)

    assert outcomes(later) == ["ack", "ack"]
    assert order_db.orders.rows[order.id].status is OrderStatus.CONFIRMED


async def test_stray_product_created_is_dead_lettered_and_the_batch_still_settles(
    answer_consumer: EventConsumer, order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    # The order queue is no longer bound to product_created; one still reaching it (a
    # binding left on a broker from before) is not the order service's to handle.
    order, _ = await order_service.create_order(1, Decimal(10))
    created = Event(
        "product_created",
        {"id": 5, "name": "Desk", "price": 120, "qty": 4, "timestamp": "2025-09-20T10:30:00Z"},
    )
    stray = FakeDelivery.of(created)
    answer = FakeDelivery.of(Event("order.qty_confirmed", {"orderId": order.id}))

    await answer_consumer.process([stray, answer])

    assert outcomes([stray, answer]) == ["dead_letter", "ack"]
    assert answer_consumer.dead_lettered == 1
    assert created.id not in order_db.inbox.seen
    assert order_db.orders.rows[order.id].status is OrderStatus.CONFIRMED


# -- running on the in-process bus -------------------------------------------------------


async def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll until the condition holds; raise TimeoutError after ``timeout`` seconds."""
    step = 0.005
    for _ in range(int(timeout / step)):
        if condition():
            return
        await asyncio.sleep(step)
    raise TimeoutError("condition not reached")


@contextlib.asynccontextmanager
async def running_stock_consumer(
    db: FakeProductDatabase, service: ProductService, **options: Any
) -> AsyncIterator[tuple[InProcessBus, EventConsumer]]:
    """An in-process bus and a started stock consumer on it; both stopped on the way out."""
    bus = InProcessBus()
    await bus.start()
    consumer = EventConsumer(
        bus, PRODUCT_SERVICE_QUEUE, db.unit_of_work, OrderStockHandler(service), **options
    )
    await consumer.start()
    try:
        yield bus, consumer
    finally:
        await consumer.stop()
        await bus.close()


async def test_started_consumer_settles_every_message_on_the_bus(
    product_db: FakeProductDatabase, product_service: ProductService, product_id: int
) -> None:
    async with running_stock_consumer(product_db, product_service, prefetch=4, batch_size=3) as (
        bus,
        consumer,
    ):
        await bus.publish([order_created(i, product_id) for i in range(1, 11)])
        await bus.publish_raw(PRODUCT_SERVICE_QUEUE.name, b"garbage", "bad", "order.created")

        await wait_for(lambda: len(answered(product_db)) == 10 and consumer.dead_lettered == 1)
        for _ in range(50):  # the dead-letter write lands just after the counter moves
            if letters := await bus.dead_letters(PRODUCT_SERVICE_QUEUE.name, 10):
                break
            await asyncio.sleep(0.01)
        depth = await bus.depth(PRODUCT_SERVICE_QUEUE.name)

    assert product_db.products.rows[product_id].qty == 90
    assert [m.message_id for m in letters] == ["bad"]
    assert depth == 0


async def test_deliveries_arriving_while_the_consumer_lingers_share_one_transaction(
    product_db: FakeProductDatabase, product_service: ProductService, product_id: int
) -> None:
    commits_before = product_db.commits
    async with running_stock_consumer(product_db, product_service, linger=0.2) as (bus, _):
        await bus.publish([order_created(1, product_id)])
        await asyncio.sleep(0.02)  # the first is taken; the consumer is lingering
        await bus.publish([order_created(i, product_id) for i in range(2, 6)])

        await wait_for(lambda: len(answered(product_db)) == 5)

    assert product_db.commits - commits_before == 1
    assert product_db.products.rows[product_id].qty == 95

"""The product service's side of quantities and cancellations, against fakes: an order
takes all its units or none; ``order.cancelled`` gives them back exactly once, whatever
order and however many times the events arrive."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.envelope import Event, MalformedEvent
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.products.domain import (
    CancelReservation,
    Refusal,
    Refused,
    Reservation,
    ReservationOutcome,
    ReserveStock,
    ShortLine,
    StockLine,
)
from orderstack.products.events import CANCELLED_REASON
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService
from tests.unit.fakes import Clock, FakeDelivery, FakeProductDatabase

CONFIRMED, FAILED = ReservationOutcome.CONFIRMED, ReservationOutcome.FAILED
CANCELLED = ReservationOutcome.CANCELLED


async def apply(
    db: FakeProductDatabase,
    service: ProductService,
    *commands: ReserveStock | CancelReservation,
) -> None:
    async with db.unit_of_work() as uow:
        await service.apply_order_events(uow, commands)
        await uow.commit()


def answers(db: FakeProductDatabase) -> list[tuple[int, str, str | None]]:
    return [
        (e.data["orderId"], e.name, e.data.get("reason"))
        for e in db.outbox.events
        if e.name.startswith("order.qty")
    ]


def held(db: FakeProductDatabase, product_id: int) -> int:
    return db.products.confirmed_units(product_id)


def ledger_holds(db: FakeProductDatabase, product_id: int) -> bool:
    """Units held by confirmed orders = sum of the stock adjustments - qty."""
    repo = db.products
    return held(db, product_id) == repo.adjusted_units(product_id) - repo.rows[product_id].qty


async def test_an_order_takes_all_its_units_or_none(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    product = await product_service.create_product("Chair", Decimal(40), 5)

    await apply(
        product_db,
        product_service,
        ReserveStock(1, product.id, 3),
        ReserveStock(2, product.id, 3),
        ReserveStock(3, product.id, 2),
    )

    assert product_db.products.rows[product.id].qty == 0
    assert [(o, name) for o, name, _ in answers(product_db)] == [
        (1, "order.qty_confirmed"),
        (2, "order.qty_failed"),
        (3, "order.qty_confirmed"),
    ]
    failed = product_db.products.reservations[2]
    assert (failed.outcome, failed.held) == (FAILED, {})
    assert failed.refusal == Refusal(
        Refused.UNAVAILABLE, (ShortLine(product.id, 3, 2),), Decimal(120)
    )
    assert held(product_db, product.id) == 5
    assert ledger_holds(product_db, product.id)


async def test_cancelling_a_confirmed_order_gives_its_units_back_once(
    product_db: FakeProductDatabase,
    product_service: ProductService,
    cache: InProcessProductCache,
) -> None:
    product = await product_service.create_product("Chair", Decimal(40), 5)
    await apply(product_db, product_service, ReserveStock(1, product.id, 4))

    await apply(product_db, product_service, CancelReservation(1, product.id, 4))
    await apply(product_db, product_service, CancelReservation(1, product.id, 4))

    after = product_db.products.rows[product.id]
    assert after.qty == 5
    assert product_db.products.reservations[1] == Reservation(
        1, product.id, 4, CANCELLED, (StockLine(product.id, 4, Decimal(40)),)
    )
    assert held(product_db, product.id) == 0
    assert ledger_holds(product_db, product.id)
    [entry] = await cache.get_many([product.id])
    assert entry is not None and (entry.qty, entry.version) == (5, after.version)
    assert len(answers(product_db)) == 1  # the confirmation; a cancellation is not answered


async def test_order_created_after_its_cancellation_takes_nothing(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    product = await product_service.create_product("Chair", Decimal(40), 5)

    await apply(product_db, product_service, CancelReservation(1, product.id, 2))
    await apply(product_db, product_service, ReserveStock(1, product.id, 2))

    assert product_db.products.rows[product.id].qty == 5
    assert answers(product_db) == [(1, "order.qty_failed", CANCELLED_REASON)]
    assert product_db.products.reservations[1] == Reservation(1, product.id, 2, CANCELLED)
    assert ledger_holds(product_db, product.id)


async def test_cancel_and_create_of_one_order_in_one_batch_take_nothing(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    product = await product_service.create_product("Chair", Decimal(40), 5)

    await apply(
        product_db,
        product_service,
        ReserveStock(1, product.id, 2),
        CancelReservation(1, product.id, 2),
    )

    assert product_db.products.rows[product.id].qty == 5
    assert answers(product_db) == [(1, "order.qty_failed", CANCELLED_REASON)]


async def test_cancelling_a_failed_order_gives_nothing_back(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    product = await product_service.create_product("Chair", Decimal(40), 1)
    await apply(product_db, product_service, ReserveStock(1, product.id, 2))

    await apply(product_db, product_service, CancelReservation(1, product.id, 2))

    assert product_db.products.rows[product.id].qty == 1
    assert product_db.products.reservations[1].outcome is CANCELLED
    assert ledger_holds(product_db, product.id)


async def test_cancelling_an_order_of_a_deleted_product_gives_the_units_back_to_its_row(
    product_db: FakeProductDatabase,
    product_service: ProductService,
    cache: InProcessProductCache,
) -> None:
    product = await product_service.create_product("Chair", Decimal(40), 5)
    await apply(product_db, product_service, ReserveStock(1, product.id, 2))
    await product_service.delete_product(product.id)

    await apply(product_db, product_service, CancelReservation(1, product.id, 2))

    row = product_db.products.rows[product.id]
    assert row.qty == 5
    assert ledger_holds(product_db, product.id)
    [entry] = await cache.get_many([product.id])
    assert entry is not None and entry.deleted and entry.version == row.version


async def test_a_redelivered_order_cancelled_changes_nothing(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    """Through the consumer: the inbox drops the second delivery of one event id."""
    product = await product_service.create_product("Chair", Decimal(40), 5)
    consumer = EventConsumer(
        InProcessBus(),
        PRODUCT_SERVICE_QUEUE,
        product_db.unit_of_work,
        OrderStockHandler(product_service),
    )
    created = Event("order.created", {"orderId": 1, "productId": product.id, "quantity": 3})
    cancelled = Event("order.cancelled", {"orderId": 1, "productId": product.id, "quantity": 3})
    await consumer.process([FakeDelivery.of(created)])

    deliveries = [FakeDelivery.of(cancelled), FakeDelivery.of(cancelled)]
    await consumer.process(deliveries)
    await consumer.process([FakeDelivery.of(cancelled)])

    assert [d.outcome for d in deliveries] == ["ack", "ack"]
    assert product_db.products.rows[product.id].qty == 5
    assert ledger_holds(product_db, product.id)


# (kind, order id, the quantity a cancel says: None for the creation's own, else a count
# that may differ from it, as a cancel that outran or disagrees with its creation would).
_EVENT = st.tuples(
    st.sampled_from(["created", "cancelled"]),
    st.integers(1, 6),
    st.none() | st.integers(1, 4),
)


@settings(max_examples=150, deadline=None)
@given(
    quantities=st.lists(st.integers(1, 4), min_size=6, max_size=6),
    stock=st.integers(0, 12),
    batches=st.lists(st.lists(_EVENT, min_size=1, max_size=4), max_size=12),
)
async def test_any_interleaving_of_creations_and_cancellations_keeps_the_ledger(
    quantities: list[int], stock: int, batches: list[list[tuple[str, int, int | None]]]
) -> None:
    """Whatever the order, batching and repetition of the events, and whatever quantity a
    cancel names (its creation's or another): stock never goes below zero, a cancelled
    order holds nothing, the units held by confirmed orders plus the stock equal the
    starting stock, and every order.created is answered."""
    db = FakeProductDatabase()
    service = ProductService(db.unit_of_work, InProcessProductCache(), Clock())
    product = await service.create_product("Chair", Decimal(40), stock)
    cancelled: set[int] = set()
    for batch in batches:
        commands: list[ReserveStock | CancelReservation] = []
        for kind, order_id, says in batch:
            quantity = quantities[order_id - 1]
            if kind == "created":
                commands.append(ReserveStock(order_id, product.id, quantity))
            else:
                claimed = quantity if says is None else says
                commands.append(CancelReservation(order_id, product.id, claimed))
                cancelled.add(order_id)
        await apply(db, service, *commands)

    qty = db.products.rows[product.id].qty
    assert qty >= 0
    assert held(db, product.id) + qty == stock
    assert ledger_holds(db, product.id)
    for order_id in cancelled:
        assert db.products.reservations[order_id].outcome is CANCELLED
    created = {o for batch in batches for kind, o, _ in batch if kind == "created"}
    assert created <= {o for o, _, _ in answers(db)}
    for order_id, name, reason in answers(db):
        if order_id in cancelled and name == "order.qty_failed":
            assert reason in (CANCELLED_REASON, "product_not_found_or_unavailable")


# -- the handler: what it accepts --------------------------------------------------------


def test_order_events_become_stock_commands_with_their_quantity(
    product_service: ProductService,
) -> None:
    handler = OrderStockHandler(product_service)
    seed = {"orderId": 7, "productId": 3, "createdAt": "2025-09-20T10:30:00Z"}

    assert handler.validate(Event("order.created", seed)) == ReserveStock(7, 3, 1)
    assert handler.validate(Event("order.created", {**seed, "quantity": 4})) == ReserveStock(
        7, 3, 4
    )
    assert handler.validate(
        Event("order.cancelled", {"orderId": 7, "productId": 3, "quantity": 4})
    ) == CancelReservation(7, 3, 4)
    assert handler.validate(
        Event("order.cancelled", {"orderId": 7, "productId": 3})
    ) == CancelReservation(7, 3, 1)


@pytest.mark.parametrize("name", ["order.created", "order.cancelled"])
@pytest.mark.parametrize(
    "change",
    [
        {"quantity": 0},
        {"quantity": -2},
        {"quantity": "2"},
        {"quantity": 2.0},
        {"quantity": True},
        {"quantity": None},
        {"quantity": 2**31},
        {"productId": None},
    ],
)
def test_a_bad_quantity_or_id_is_malformed(
    product_service: ProductService, name: str, change: dict[str, object]
) -> None:
    payload = {"orderId": 7, "productId": 3, **change}

    with pytest.raises(MalformedEvent, match=f"invalid {name}"):
        OrderStockHandler(product_service).validate(Event(name, payload))

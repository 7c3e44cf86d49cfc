"""Orders of several lines against fakes of the ports: the product service takes all the
lines of an order or none, across products, whatever the interleaving of creations,
cancels (duplicated, early or late) and restocks; the order service fingerprints lines,
names every unknown product, and writes prices and failures only where they hold."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.envelope import Event
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE
from orderstack.orders.api import order_router
from orderstack.orders.domain import (
    Failure,
    IdempotencyKeyReused,
    OrderLine,
    OrderStatus,
    PriceCheck,
    SettleOrder,
    ShortLine,
    UnknownProduct,
)
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products.domain import (
    CancelReservation,
    ReservationOutcome,
    ReserveStock,
    StockLine,
)
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService
from tests.unit.fakes import (
    Clock,
    FakeCatalog,
    FakeDelivery,
    FakeOrderDatabase,
    FakeProductDatabase,
)
from tests.unit.routes import open_access, route_client

CONFIRMED, FAILED = ReservationOutcome.CONFIRMED, ReservationOutcome.FAILED
CANCELLED = ReservationOutcome.CANCELLED
PRICES = (Decimal("3.10"), Decimal("7.25"), Decimal("11.00"))


def _summed(lines: list[tuple[int, int]]) -> dict[int, int]:
    units: Counter[int] = Counter()
    for product_id, quantity in lines:
        units[product_id] += quantity
    return dict(units)


# -- the product service: any interleaving ----------------------------------------------

# An order: 1-5 lines over three products (a product may come twice), 1-4 units each.
_ORDER = st.lists(st.tuples(st.integers(0, 2), st.integers(1, 4)), min_size=1, max_size=5)
# ("created" | "cancelled", order index), ("restock", product index, units) or, rarely,
# ("delete", product index, 0): later orders for it fail, cancels still give back to it.
_EVENT = st.tuples(st.sampled_from(["created", "cancelled"]), st.integers(0, 5), st.just(0))
_STEP = st.one_of(
    _EVENT,
    _EVENT,
    _EVENT,
    st.tuples(st.just("restock"), st.integers(0, 2), st.integers(1, 5)),
    st.tuples(st.just("delete"), st.integers(0, 2), st.just(0)),
)


@settings(max_examples=200, deadline=None)
@given(
    orders=st.lists(_ORDER, min_size=6, max_size=6),
    opening=st.lists(st.integers(0, 8), min_size=3, max_size=3),
    batches=st.lists(st.lists(_STEP, min_size=1, max_size=5), max_size=10),
    agreed=st.lists(st.booleans(), min_size=6, max_size=6),
)
async def test_any_interleaving_of_multi_line_orders_cancels_and_restocks_keeps_the_ledger(
    orders: list[list[tuple[int, int]]],
    opening: list[int],
    batches: list[list[tuple[str, int, int]]],
    agreed: list[bool],
) -> None:
    """Per product: stock >= 0 and units held by confirmed reservations' lines = opening +
    adjustments - stock. Per order: answered, every answer alike, holding all its lines
    (summed per product, priced) or nothing; a cancel gives back every line once (a second
    cancel, or a cancel before the creation, gives nothing)."""
    db = FakeProductDatabase()
    service = ProductService(db.unit_of_work, InProcessProductCache(), Clock())
    ids = [(await service.create_product(f"P{i}", PRICES[i], q)).id for i, q in enumerate(opening)]
    lines = [[(ids[p], q) for p, q in order] for order in orders]
    totals = [sum((PRICES[ids.index(pid)] * q for pid, q in order), Decimal(0)) for order in lines]
    created: set[int] = set()
    cancelled: set[int] = set()
    for batch in batches:
        commands: list[ReserveStock | CancelReservation] = []
        for kind, index, units in batch:
            if kind == "restock":
                if ids[index] not in db.products.deleted_at:
                    await service.adjust_stock(ids[index], units, "restock")
                continue
            if kind == "delete":
                if ids[index] not in db.products.deleted_at:
                    await service.delete_product(ids[index])
                continue
            order_id = 100 + index
            stock_lines = tuple(StockLine(pid, q) for pid, q in lines[index])
            if kind == "created":
                # Half the orders carry the catalog total their client agreed to.
                total = totals[index] if agreed[index] else None
                commands.append(ReserveStock(order_id, lines=stock_lines, agreed_total=total))
                created.add(order_id)
            else:
                commands.append(CancelReservation(order_id, lines=stock_lines))
                cancelled.add(order_id)
        if commands:
            async with db.unit_of_work() as uow:
                await service.apply_order_events(uow, commands)
                await uow.commit()

    repo = db.products
    for pid in ids:
        qty = repo.rows[pid].qty
        assert qty >= 0
        assert repo.confirmed_units(pid) == repo.adjusted_units(pid) - qty
    # Each order's answers, but the "cancelled" ones: an order.created delivered again
    # after the order's cancel is answered from the reservation as it is now, cancelled.
    answered: dict[int, set[str]] = {}
    for event in db.outbox.events:
        if event.name.startswith("order.qty"):
            names = answered.setdefault(event.data["orderId"], set())
            if event.data.get("reason") != "cancelled":
                names.add(event.name)
            else:
                assert event.data["orderId"] in cancelled
    assert set(answered) == created  # each order.created answered, no other order
    for order_id in created | cancelled:
        index = order_id - 100
        reservation = repo.reservations[order_id]
        if order_id in cancelled:
            assert reservation.outcome is CANCELLED and reservation.held == {}
        if order_id in created:
            assert len(answered[order_id]) <= 1, answered[order_id]  # decided once
            if reservation.outcome is CONFIRMED:
                assert answered[order_id] == {"order.qty_confirmed"}
                assert reservation.held == _summed(lines[index])  # all lines
                assert reservation.total == totals[index]  # priced from the rows
            elif order_id not in cancelled:
                assert reservation.held == {}
    # Held units per product from the reservations = what the lines of the confirmed say.
    for pid in ids:
        expected = sum(
            _summed(lines[o - 100]).get(pid, 0)
            for o, r in repo.reservations.items()
            if r.outcome is CONFIRMED
        )
        assert repo.confirmed_units(pid) == expected


async def test_a_short_line_fails_the_whole_order_and_names_each_short_line(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    a = await product_service.create_product("A", Decimal("2.50"), 5)
    b = await product_service.create_product("B", Decimal(4), 1)
    c = await product_service.create_product("C", Decimal(1), 0)
    request = ReserveStock(
        1, lines=(StockLine(b.id, 1), StockLine(a.id, 3), StockLine(c.id, 2), StockLine(b.id, 1))
    )
    async with product_db.unit_of_work() as uow:
        await product_service.apply_order_events(uow, [request])
        await uow.commit()

    assert [product_db.products.rows[p].qty for p in (a.id, b.id, c.id)] == [5, 1, 0]
    [answer] = product_db.outbox.named("order.qty_failed")
    assert answer.data["reason"] == "product_not_found_or_unavailable"
    assert answer.data["lines"] == [
        {"productId": b.id, "requested": 2, "available": 1},  # its two lines summed
        {"productId": c.id, "requested": 2, "available": 0},
    ]
    assert answer.data["totalPrice"] == 2.5 * 3 + 4 * 2 + 2


async def test_a_multi_line_order_through_the_consumer_is_priced_and_checked(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    """order.created as our order service writes it (items, agreedTotal), through the
    consumer: the right total confirms with priced lines, a wrong one takes nothing."""
    a = await product_service.create_product("A", Decimal("19.99"), 10)
    b = await product_service.create_product("B", Decimal("0.01"), 10)
    consumer = EventConsumer(
        InProcessBus(),
        PRODUCT_SERVICE_QUEUE,
        product_db.unit_of_work,
        OrderStockHandler(product_service),
    )
    items = [
        {"productId": b.id, "quantity": 3},
        {"productId": a.id, "quantity": 2},
        {"productId": b.id, "quantity": 1},
    ]
    right = Event("order.created", {"orderId": 1, "items": items, "agreedTotal": 40.02})
    wrong = Event("order.created", {"orderId": 2, "items": items, "agreedTotal": 40.01})
    deliveries = [FakeDelivery.of(right), FakeDelivery.of(wrong)]
    await consumer.process(deliveries)

    assert [d.outcome for d in deliveries] == ["ack", "ack"]
    [confirmed] = product_db.outbox.named("order.qty_confirmed")
    assert confirmed.data["orderId"] == 1 and confirmed.data["totalPrice"] == 40.02
    assert sorted(
        (i["productId"], i["quantity"], i["unitPrice"]) for i in confirmed.data["items"]
    ) == sorted([(a.id, 2, 19.99), (b.id, 4, 0.01)])
    [failed] = product_db.outbox.named("order.qty_failed")
    assert (failed.data["orderId"], failed.data["reason"], failed.data["totalPrice"]) == (
        2,
        "price_changed",
        40.02,
    )
    assert "lines" not in failed.data
    assert [product_db.products.rows[p].qty for p in (a.id, b.id)] == [8, 6]


# -- the order service -------------------------------------------------------------------

LINES = (OrderLine(1, 2), OrderLine(2, 1), OrderLine(1, 3))


async def settle(db: FakeOrderDatabase, service: OrderService, *answers: SettleOrder) -> None:
    async with db.unit_of_work() as uow:
        await service.settle_orders(uow, answers)
        await uow.commit()


async def test_a_multi_line_order_is_stored_with_its_lines_and_its_event_carries_them(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, created = await order_service.create_order(items=LINES, total_price=Decimal(20))

    assert created and order.items == LINES
    assert (order.product_id, order.quantity, order.agreed_total) == (None, None, Decimal(20))
    [event] = order_db.outbox.events
    assert event.data["items"] == [
        {"productId": 1, "quantity": 2},
        {"productId": 2, "quantity": 1},
        {"productId": 1, "quantity": 3},
    ]
    assert "productId" not in event.data and "quantity" not in event.data
    assert event.data["agreedTotal"] == 20


async def test_without_a_total_the_order_is_unpriced_and_its_event_agrees_to_nothing(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(items=LINES)

    assert (order.total_price, order.agreed_total) == (None, None)
    [event] = order_db.outbox.events
    assert "agreedTotal" not in event.data and "totalPrice" not in event.data


async def test_the_off_price_check_sends_no_agreed_total(
    order_db: FakeOrderDatabase, catalog: FakeCatalog, clock: Clock
) -> None:
    service = OrderService(order_db.unit_of_work, catalog, clock, price_check=PriceCheck.OFF)
    multi, _ = await service.create_order(items=LINES, total_price=Decimal(5))
    one, _ = await service.create_order(1, Decimal(7), quantity=2)

    assert (multi.agreed_total, one.agreed_total) == (None, None)
    events = order_db.outbox.events
    assert all("agreedTotal" not in e.data for e in events)
    assert events[1].data["totalPrice"] == 7  # the seed's field, as sent


async def test_same_key_same_items_replays_the_order(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    first, _ = await order_service.create_order(
        items=LINES, total_price=Decimal("20"), request_id="k"
    )
    again, created = await order_service.create_order(
        items=LINES, total_price=Decimal("20.00"), request_id="k"
    )

    assert (again, created) == (first, False)
    assert len(order_db.outbox.events) == 1


async def test_one_line_as_items_or_as_product_id_is_one_request(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    first, _ = await order_service.create_order(1, Decimal(9), request_id="k", quantity=3)
    again, created = await order_service.create_order(
        items=(OrderLine(1, 3),), total_price=Decimal(9), request_id="k"
    )

    assert (again.id, created) == (first.id, False)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param((OrderLine(1, 2), OrderLine(2, 1), OrderLine(1, 4)), id="a quantity"),
        pytest.param((OrderLine(1, 2), OrderLine(2, 1)), id="a line fewer"),
        pytest.param((*LINES, OrderLine(2, 1)), id="a line more"),
        pytest.param((OrderLine(1, 2), OrderLine(1, 1), OrderLine(1, 3)), id="a product"),
        pytest.param((OrderLine(1, 2),), id="one line"),
    ],
)
async def test_same_key_other_items_is_refused_and_writes_nothing(
    order_service: OrderService, order_db: FakeOrderDatabase, other: tuple[OrderLine, ...]
) -> None:
    first, _ = await order_service.create_order(items=LINES, request_id="k")

    with pytest.raises(IdempotencyKeyReused):
        await order_service.create_order(items=other, request_id="k")

    assert list(order_db.orders.rows) == [first.id]
    assert len(order_db.outbox.events) == 1


async def test_same_key_same_items_other_total_is_refused(
    order_service: OrderService,
) -> None:
    await order_service.create_order(items=LINES, total_price=Decimal(20), request_id="k")
    for total in (Decimal(21), None):
        with pytest.raises(IdempotencyKeyReused):
            await order_service.create_order(items=LINES, total_price=total, request_id="k")


async def test_every_unknown_product_is_named_and_nothing_is_stored(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    lines = (OrderLine(4, 1), OrderLine(1, 1), OrderLine(3, 1), OrderLine(4, 2))
    with pytest.raises(UnknownProduct) as refused:
        await order_service.create_order(items=lines, total_price=Decimal(1))

    assert refused.value.product_ids == (4, 3)
    assert order_db.orders.rows == {} and order_db.outbox.events == []


@pytest.fixture
async def http(order_service: OrderService) -> AsyncIterator[httpx.AsyncClient]:
    async with route_client(order_router(open_access()), "seed", orders=order_service) as client:
        yield client


async def test_the_400_names_each_unknown_product(http: httpx.AsyncClient) -> None:
    items = [
        {"product_id": 1, "quantity": 1},
        {"product_id": 77, "quantity": 1},
        {"productId": 88},
    ]
    response = await http.post("/orders", json={"items": items})

    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "PRODUCT_NOT_FOUND"
    assert "product 77 not found" in body["error"] and "product 88 not found" in body["error"]
    assert "product 1 " not in body["error"]


async def test_a_multi_line_order_is_answered_with_its_lines(http: httpx.AsyncClient) -> None:
    items = [{"product_id": 2, "quantity": 3}, {"productId": 1}]
    response = await http.post("/orders", json={"items": items, "total_price": 12.5})

    assert response.status_code == 201, response.text
    body = response.json()
    assert "product_id" not in body and "quantity" not in body
    assert body["total_price"] == 12.5 and body["status"] == "pending"
    assert body["items"] == [
        {"product_id": 2, "quantity": 3, "unit_price": None, "line_total": None},
        {"product_id": 1, "quantity": 1, "unit_price": None, "line_total": None},
    ]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"items": []}, id="no line"),
        pytest.param({"items": [{"product_id": 1}] * 101}, id="101 lines"),
        pytest.param({"items": [{"product_id": 1, "quantity": 1001}]}, id="1001 units"),
        pytest.param({"items": [{"product_id": 1, "quantity": 0}]}, id="0 units"),
        pytest.param({"items": [{"product_id": 1}], "product_id": 1}, id="items and product"),
        pytest.param({"items": [{"product_id": 1}], "quantity": 1}, id="items and quantity"),
        pytest.param({"items": [{"product_id": 1, "productId": 1}]}, id="a line's id twice"),
        pytest.param({"items": [{"product_id": 1, "price": 1}]}, id="an unknown line field"),
        pytest.param({"total_price": 5}, id="no product"),
    ],
)
async def test_malformed_items_are_refused(
    http: httpx.AsyncClient, order_db: FakeOrderDatabase, body: dict[str, object]
) -> None:
    response = await http.post("/orders", json=body)

    assert response.status_code == 400, response.text
    assert order_db.orders.rows == {}


async def test_100_lines_of_1000_units_are_taken(
    http: httpx.AsyncClient, order_db: FakeOrderDatabase
) -> None:
    response = await http.post(
        "/orders", json={"items": [{"product_id": 2, "quantity": 1000}] * 100}
    )

    assert response.status_code == 201, response.text
    [event] = order_db.outbox.events
    assert len(event.data["items"]) == 100


async def test_settle_writes_unit_prices_and_the_catalog_total_of_an_unpriced_order(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    unpriced, _ = await order_service.create_order(items=LINES)
    priced = (OrderLine(1, 5, Decimal("1.50")), OrderLine(2, 1, Decimal(4)))
    answer = SettleOrder(unpriced.id, OrderStatus.CONFIRMED, priced, Decimal("11.50"))

    await settle(order_db, order_service, answer)
    stored = order_db.orders.rows[unpriced.id]
    assert stored.status is OrderStatus.CONFIRMED
    assert stored.total_price == Decimal("11.50")
    assert [(li.product_id, li.quantity, li.unit_price) for li in stored.items] == [
        (1, 2, Decimal("1.50")),
        (2, 1, Decimal(4)),
        (1, 3, Decimal("1.50")),
    ]
    assert [li.line_total for li in stored.items] == [Decimal(3), Decimal(4), Decimal("4.50")]

    # Repeated with other prices: what was written stays.
    other = (OrderLine(1, 5, Decimal(9)), OrderLine(2, 1, Decimal(9)))
    await settle(
        order_db, order_service, SettleOrder(unpriced.id, OrderStatus.CONFIRMED, other, Decimal(54))
    )
    assert order_db.orders.rows[unpriced.id] == stored


async def test_settle_keeps_the_total_the_client_sent(
    order_db: FakeOrderDatabase, catalog: FakeCatalog, clock: Clock
) -> None:
    service = OrderService(order_db.unit_of_work, catalog, clock, price_check=PriceCheck.OFF)
    order, _ = await service.create_order(items=LINES, total_price=Decimal(1))
    priced = (OrderLine(1, 5, Decimal(2)), OrderLine(2, 1, Decimal(3)))

    await settle(
        order_db, service, SettleOrder(order.id, OrderStatus.CONFIRMED, priced, Decimal(13))
    )

    stored = order_db.orders.rows[order.id]
    assert stored.total_price == Decimal(1)  # recorded as sent
    assert [li.unit_price for li in stored.items] == [Decimal(2), Decimal(3), Decimal(2)]


async def test_a_failure_is_recorded_on_a_failed_order_only_and_once(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    failing, _ = await order_service.create_order(items=LINES)
    confirmed, _ = await order_service.create_order(items=LINES)
    await settle(order_db, order_service, SettleOrder(confirmed.id, OrderStatus.CONFIRMED))
    why = Failure("product_not_found_or_unavailable", (ShortLine(1, 5, 2),), Decimal(12))
    other = Failure("price_changed", (), Decimal(99))

    await settle(
        order_db,
        order_service,
        SettleOrder(failing.id, OrderStatus.FAILED, failure=why),
        SettleOrder(confirmed.id, OrderStatus.FAILED, failure=other),
    )
    await settle(
        order_db, order_service, SettleOrder(failing.id, OrderStatus.FAILED, failure=other)
    )

    assert order_db.orders.rows[failing.id].failure == why
    assert order_db.orders.rows[failing.id].status is OrderStatus.FAILED
    assert order_db.orders.rows[confirmed.id].failure is None
    assert order_db.orders.rows[confirmed.id].status is OrderStatus.CONFIRMED


async def test_prices_are_not_written_on_a_failed_order(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    order, _ = await order_service.create_order(items=LINES)
    await settle(order_db, order_service, SettleOrder(order.id, OrderStatus.FAILED))
    priced = (OrderLine(1, 5, Decimal(2)), OrderLine(2, 1, Decimal(3)))

    await settle(
        order_db, order_service, SettleOrder(order.id, OrderStatus.CONFIRMED, priced, Decimal(13))
    )

    stored = order_db.orders.rows[order.id]
    assert stored.status is OrderStatus.FAILED
    assert stored.total_price is None and all(li.unit_price is None for li in stored.items)


async def test_a_short_order_whose_catalog_total_is_past_money_is_still_decided(
    product_db: FakeProductDatabase,
    product_service: ProductService,
    order_service: OrderService,
    order_db: FakeOrderDatabase,
) -> None:
    """A short line of an order whose catalog total does not fit in money (DECIMAL(12,2)):
    the refusal the product service writes must be one the order service reads, or the
    answer is dead-lettered and the order stays pending for ever (resent, refused alike)."""
    dear = await product_service.create_product("Dear", Decimal("9999999999.99"), 1)
    cheap = await product_service.create_product("Cheap", Decimal(1), 5)
    order, _ = await order_service.create_order(
        items=(OrderLine(dear.id, 2), OrderLine(cheap.id, 1))
    )
    async with product_db.unit_of_work() as uow:
        request = ReserveStock(order.id, lines=(StockLine(dear.id, 2), StockLine(cheap.id, 1)))
        await product_service.apply_order_events(uow, [request])
        await uow.commit()
    [answer] = product_db.outbox.named("order.qty_failed")
    consumer = EventConsumer(
        InProcessBus(),
        ORDER_SERVICE_QUEUE,
        order_db.unit_of_work,
        OrderEventsHandler(order_service),
    )
    delivery = FakeDelivery.of(answer)

    await consumer.process([delivery])

    assert delivery.outcome == "ack", delivery.reason
    stored = order_db.orders.rows[order.id]
    assert stored.status is OrderStatus.FAILED
    assert stored.failure is not None
    assert stored.failure.reason == "product_not_found_or_unavailable"
    assert stored.failure.short == (ShortLine(dear.id, 2, 1),)


async def test_a_deleted_product_fails_its_order_with_nothing_left_and_no_total(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    a = await product_service.create_product("A", Decimal(2), 5)
    gone = await product_service.create_product("Gone", Decimal(3), 5)
    await product_service.delete_product(gone.id)
    request = ReserveStock(1, lines=(StockLine(a.id, 1), StockLine(gone.id, 2)))
    async with product_db.unit_of_work() as uow:
        await product_service.apply_order_events(uow, [request])
        await uow.commit()

    [answer] = product_db.outbox.named("order.qty_failed")
    assert answer.data["lines"] == [{"productId": gone.id, "requested": 2, "available": 0}]
    assert "totalPrice" not in answer.data  # a product unknown: no catalog total
    assert product_db.products.rows[a.id].qty == 5


async def test_a_cancel_gives_every_line_back_even_to_a_deleted_product(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    a = await product_service.create_product("A", Decimal(2), 5)
    b = await product_service.create_product("B", Decimal(3), 5)
    lines = (StockLine(a.id, 2), StockLine(b.id, 3), StockLine(a.id, 1))
    async with product_db.unit_of_work() as uow:
        await product_service.apply_order_events(uow, [ReserveStock(1, lines=lines)])
        await uow.commit()
    await product_service.delete_product(b.id)

    for _ in range(2):
        async with product_db.unit_of_work() as uow:
            # The cancel names only the first line: the recorded lines are what comes back.
            cancel = CancelReservation(1, lines=lines[:1])
            await product_service.apply_order_events(uow, [cancel])
            await uow.commit()

    rows = product_db.products.rows
    assert (rows[a.id].qty, rows[b.id].qty) == (5, 5)
    assert product_db.products.reservations[1].outcome is CANCELLED


async def test_concurrent_twins_with_other_items_create_one_order(
    order_service: OrderService, order_db: FakeOrderDatabase
) -> None:
    """Both pass the first look-up; the unique key stops the second, which then compares
    fingerprints: the same items are answered the first's order, other items refused."""
    results = await asyncio.gather(
        order_service.create_order(items=LINES, request_id="twin"),
        order_service.create_order(items=LINES, request_id="twin"),
        order_service.create_order(items=LINES[:2], request_id="twin"),
        return_exceptions=True,
    )

    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(order_db.orders.rows) == 1 and len(order_db.outbox.events) == 1
    [only] = order_db.orders.rows
    assert {order.id for order, _ in created} == {only}
    assert sorted(flag for _, flag in created) == [False, True]
    assert len(refused) == 1 and isinstance(refused[0], IdempotencyKeyReused)


@pytest.mark.parametrize(("stock", "status"), [(1999, "failed"), (2000, "confirmed")])
async def test_a_product_on_two_lines_of_1000_units_is_decided_as_one_demand_of_2000(
    product_db: FakeProductDatabase,
    product_service: ProductService,
    order_service: OrderService,
    order_db: FakeOrderDatabase,
    stock: int,
    status: str,
) -> None:
    """Each line within the bound of a line (1000), their sum past it: the product service
    reads the order, and the order service reads the answer naming 2000 units (a summed
    line is not a line of the request: no bound of 1000 on it)."""
    product = await product_service.create_product("Bulk", Decimal(1), stock)
    order, _ = await order_service.create_order(
        items=(OrderLine(product.id, 1000), OrderLine(product.id, 1000))
    )
    products_consumer = EventConsumer(
        InProcessBus(),
        PRODUCT_SERVICE_QUEUE,
        product_db.unit_of_work,
        OrderStockHandler(product_service),
    )
    orders_consumer = EventConsumer(
        InProcessBus(),
        ORDER_SERVICE_QUEUE,
        order_db.unit_of_work,
        OrderEventsHandler(order_service),
    )
    [created] = order_db.outbox.events
    delivery = FakeDelivery.of(created)
    await products_consumer.process([delivery])
    assert delivery.outcome == "ack", delivery.reason
    [answer] = [e for e in product_db.outbox.events if e.name.startswith("order.qty")]
    answered = FakeDelivery.of(answer)
    await orders_consumer.process([answered])

    assert answered.outcome == "ack", answered.reason
    stored = order_db.orders.rows[order.id]
    assert stored.status.value == status
    if status == "failed":
        assert stored.failure is not None
        assert stored.failure.short == (ShortLine(product.id, 2000, 1999),)
        assert product_db.products.rows[product.id].qty == 1999
    else:
        assert stored.total_price == Decimal(2000)
        assert product_db.products.rows[product.id].qty == 0


async def test_a_price_changed_after_the_order_is_checked_against_the_locked_row(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    """The client agreed to the old price; the product's price changed before its stock
    was taken: the order fails with price_changed and the new catalog total, nothing
    taken; an order without a total is priced at the new price; a cancel of it gives
    the units back whatever the price is by then."""
    a = await product_service.create_product("A", Decimal(10), 5)
    b = await product_service.create_product("B", Decimal(1), 5)
    lines = (StockLine(a.id, 2), StockLine(b.id, 1))
    await product_service.update_product(a.id, {"price": Decimal("10.50")})
    async with product_db.unit_of_work() as uow:
        await product_service.apply_order_events(
            uow,
            [ReserveStock(1, lines=lines, agreed_total=Decimal(21)), ReserveStock(2, lines=lines)],
        )
        await uow.commit()

    [failed] = product_db.outbox.named("order.qty_failed")
    assert (failed.data["orderId"], failed.data["reason"], failed.data["totalPrice"]) == (
        1,
        "price_changed",
        22,
    )
    [confirmed] = product_db.outbox.named("order.qty_confirmed")
    assert (confirmed.data["orderId"], confirmed.data["totalPrice"]) == (2, 22)
    assert [product_db.products.rows[p].qty for p in (a.id, b.id)] == [3, 4]

    await product_service.update_product(a.id, {"price": Decimal(99)})
    async with product_db.unit_of_work() as uow:
        await product_service.apply_order_events(uow, [CancelReservation(2, lines=lines)])
        await uow.commit()
    assert [product_db.products.rows[p].qty for p in (a.id, b.id)] == [5, 5]
    assert product_db.products.reservations[2].total == Decimal(22)  # as it was taken

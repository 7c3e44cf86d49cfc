"""The invariant checks of harness/invariants.py and harness/checks.py, each shown a
planted fault on a SQLite file with the services' tables: a check that cannot report what
it is for would let every chaos run pass. Each starts from a consistent database (which
every check passes) and breaks one thing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.cancels import CancelResult
from harness.checks import CANCELS, DEAD_LETTERS, QUEUES, invariant_checks
from harness.invariants import (
    Settlement,
    cancel_violations,
    harness_engine,
    ledger_violations,
    ledger_violations_on,
    stock_violations,
    unconsumed_events,
)
from orderstack.orders.repository import orders
from orderstack.orders.repository import outbox as orders_outbox
from orderstack.products.repository import inbox as products_inbox
from orderstack.products.repository import products, stock_adjustments, stock_reservations

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PRODUCT, STOCK = 1, 10
# order id -> (units, status): 2 confirmed, 1 failed, 3 cancelled; 8 units left.
ORDERS = {1: (2, "confirmed"), 2: (1, "failed"), 3: (3, "cancelled")}
ACCEPTED = list(ORDERS)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    """(the URL the checks take, a sync engine to plant faults with)."""
    path = tmp_path / "checked.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    orders.metadata.create_all(engine)
    products.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            products.insert().values(
                id=PRODUCT,
                name="p",
                price=Decimal(1),
                qty=8,
                version=4,
                created_at=NOW,
                updated_at=NOW,
            )
        )
        conn.execute(
            stock_adjustments.insert().values(
                product_id=PRODUCT,
                delta=STOCK,
                reason="created",
                qty_after=STOCK,
                created_at=NOW,
            )
        )
        for order_id, (units, status) in ORDERS.items():
            conn.execute(
                orders.insert().values(
                    id=order_id,
                    product_id=PRODUCT,
                    total_price=Decimal(1),
                    quantity=units,
                    status=status,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
            conn.execute(
                stock_reservations.insert().values(
                    order_id=order_id,
                    product_id=PRODUCT,
                    outcome=status,
                    quantity=units,
                    created_at=NOW,
                )
            )
    yield f"sqlite:///{path}", engine
    engine.dispose()


def _run(engine: sa.Engine, *statements: sa.Executable) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


async def test_a_consistent_database_passes_every_check(database: tuple[str, sa.Engine]) -> None:
    url, _ = database
    assert await stock_violations(url, {PRODUCT: STOCK}, ACCEPTED) == []
    assert await ledger_violations(url) == []
    assert await ledger_violations(url, [PRODUCT]) == []
    assert await cancel_violations(url, ACCEPTED, {3}, {2}) == []
    assert await unconsumed_events(url) == 0


async def test_a_unit_taken_twice_is_reported(database: tuple[str, sa.Engine]) -> None:
    url, engine = database
    _run(engine, products.update().values(qty=7))  # one unit more taken than confirmed
    found = await stock_violations(url, {PRODUCT: STOCK}, ACCEPTED)
    assert found == [f"product {PRODUCT}: 2 units confirmed but 3 units taken (10 -> 7)"]
    assert "ledger adds up to 10 - qty 7" in " ".join(await ledger_violations(url))


async def test_an_accepted_order_missing_or_pending_is_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    _run(engine, orders.update().where(orders.c.id == 2).values(status="pending"))
    found = await stock_violations(url, {PRODUCT: STOCK}, [*ACCEPTED, 99])
    assert "1 accepted orders missing, e.g. [99]" in found
    assert "1 accepted orders not settled, e.g. [2]" in found


async def test_negative_stock_is_reported(database: tuple[str, sa.Engine]) -> None:
    url, engine = database
    with engine.begin() as conn:  # past the CHECK constraint, as a broken writer would be
        conn.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        conn.execute(products.update().values(qty=-1))
    assert f"product {PRODUCT} has negative stock -1" in await stock_violations(
        url, {PRODUCT: STOCK}, ACCEPTED
    )
    assert f"product {PRODUCT} has negative stock -1" in await ledger_violations(url)


async def test_a_confirmation_the_ledger_does_not_hold_is_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    _run(
        engine,
        stock_reservations.update()
        .where(stock_reservations.c.order_id == 1)
        .values(outcome="failed"),
    )
    found = await stock_violations(url, {PRODUCT: STOCK}, ACCEPTED)
    assert f"product {PRODUCT}: ledger has 0 confirmed, orders 2" in found


async def test_a_product_without_a_ledger_entry_is_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    _run(engine, stock_adjustments.delete())
    found = await ledger_violations(url)
    assert f"product {PRODUCT} has no entry in the stock ledger" in found


async def test_cancel_answers_the_database_does_not_bear_out_are_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    # Order 1 answered 200 (cancelled) but confirmed; order 3 answered 409 but cancelled.
    found = await cancel_violations(url, ACCEPTED, {1}, {3})
    assert found and "2 orders not as their cancel was answered" in found[0]
    # A cancelled order whose reservation still holds its units.
    _run(
        engine,
        stock_reservations.update()
        .where(stock_reservations.c.order_id == 3)
        .values(outcome="confirmed"),
    )
    found = await cancel_violations(url, ACCEPTED, {3}, {2})
    assert found and "status is not their stock reservation's outcome" in found[0]


async def test_an_event_sent_but_not_consumed_is_counted(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    event = dict(event_type="order.created", payload="{}", created_at=NOW)
    _run(
        engine,
        orders_outbox.insert().values(event_id="consumed", published_at=NOW, **event),
        orders_outbox.insert().values(event_id="in flight", published_at=NOW, **event),
        products_inbox.insert().values(
            event_id="consumed", event_type="order.created", processed_at=NOW
        ),
    )
    assert await unconsumed_events(url) == 1


async def test_the_checks_refuse_to_pass_on_nothing(database: tuple[str, sa.Engine]) -> None:
    url, engine = database
    assert await stock_violations(url, {}, ACCEPTED) == ["nothing to check: no product given"]
    assert await stock_violations(url, {PRODUCT: STOCK}, []) == [
        "nothing to check: no accepted order given"
    ]
    assert await cancel_violations(url, [], {1}) == ["nothing to check: no accepted order given"]
    assert await cancel_violations(url, ACCEPTED) == [
        "nothing to check: no cancel was answered 200 or 409"
    ]
    assert await ledger_violations(url, []) == ["nothing to check: an empty list of products given"]
    assert await ledger_violations(url, [PRODUCT, 42]) == ["products [42] missing"]
    _run(engine, products.delete())
    engine_ = harness_engine(url)
    try:
        async with engine_.connect() as conn:
            assert await ledger_violations_on(conn) == ["nothing to check: no product found"]
    finally:
        await engine_.dispose()


async def test_work_left_in_the_queues_and_unexpected_dead_letters_are_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, _ = database
    cancels = CancelResult(orders=1, cancelled={3}, refused={2})
    cancels.problems.append("order 3: cancel's final answer 404")
    state = Settlement(
        {"confirmed": 1, "failed": 1, "cancelled": 1},
        0,
        {
            "product-service.events": 0,
            "product-service.events.dlq": 4,  # one more than the malformed messages
            "order-service.events": 2,  # held unacknowledged, say
            "order-service.events.dlq": 0,
        },
    )
    checks = await invariant_checks(
        url, {PRODUCT: STOCK}, ACCEPTED, state, cancels, malformed_injected=3
    )
    assert checks[QUEUES] == ["messages left unprocessed: {'order-service.events': 2}"]
    assert checks[DEAD_LETTERS] and "'product-service.events.dlq': 4" in checks[DEAD_LETTERS][0]
    assert checks[CANCELS] == ["order 3: cancel's final answer 404"]
    unlooked = await invariant_checks(
        url, {PRODUCT: STOCK}, ACCEPTED, Settlement(), cancels, malformed_injected=0
    )
    assert unlooked[QUEUES] == ["the queues were not looked at"]

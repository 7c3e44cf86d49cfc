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
from harness.checks import (
    CANCELS,
    DEAD_LETTERS,
    LINES,
    NO_OVERSELL,
    QUEUES,
    SEVERAL_LINES,
    invariant_checks,
)
from harness.invariants import (
    Settlement,
    cancel_violations,
    harness_engine,
    ledger_violations,
    ledger_violations_on,
    line_violations,
    order_figures,
    several_lines_confirmed,
    stock_violations,
    unconsumed_events,
)
from orderstack.orders.repository import order_lines, orders
from orderstack.orders.repository import outbox as orders_outbox
from orderstack.products.repository import inbox as products_inbox
from orderstack.products.repository import (
    products,
    reservation_lines,
    stock_adjustments,
    stock_reservations,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PRODUCT, STOCK = 1, 10
OTHER, OTHER_STOCK = 2, 6
PRICES = {PRODUCT: Decimal("1.00"), OTHER: Decimal("2.50")}
INITIAL = {PRODUCT: STOCK, OTHER: OTHER_STOCK}
# One-line orders: order id -> (units of PRODUCT, status): 2 confirmed, 1 failed, 3
# cancelled after it was confirmed (its reservation keeps the lines it held).
ORDERS = {1: (2, "confirmed"), 2: (1, "failed"), 3: (3, "cancelled")}
# Orders of several lines, as sent (PRODUCT on two lines of order 4): order 4 confirmed
# (PRODUCT 2 units, OTHER 2 units, total 7.00); order 5 cancelled before it was seen.
SEVERAL = {
    4: ([(PRODUCT, 1), (OTHER, 2), (PRODUCT, 1)], "confirmed"),
    5: ([(OTHER, 1), (PRODUCT, 1)], "cancelled"),
}
ACCEPTED = [*ORDERS, *SEVERAL]
# Left: PRODUCT 10 - 2 (order 1) - 2 (order 4) = 6; OTHER 6 - 2 (order 4) = 4.
LEFT = {PRODUCT: 6, OTHER: 4}


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    """(the URL the checks take, a sync engine to plant faults with)."""
    path = tmp_path / "checked.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    orders.metadata.create_all(engine)
    products.metadata.create_all(engine)
    with engine.begin() as conn:
        for product_id, stock in INITIAL.items():
            conn.execute(
                products.insert().values(
                    id=product_id,
                    name=f"p{product_id}",
                    price=PRICES[product_id],
                    qty=LEFT[product_id],
                    version=4,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
            conn.execute(
                stock_adjustments.insert().values(
                    product_id=product_id,
                    delta=stock,
                    reason="created",
                    qty_after=stock,
                    created_at=NOW,
                )
            )
        for order_id, (units, status) in ORDERS.items():
            conn.execute(
                orders.insert().values(
                    id=order_id,
                    product_id=PRODUCT,
                    total_price=PRICES[PRODUCT] * units,
                    quantity=units,
                    status=status,
                    failure=(
                        '{"reason": "product_not_found_or_unavailable", "short": [], "total": null}'
                        if status == "failed"
                        else None
                    ),
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
            if status != "failed":  # it held its line (order 3 until its cancel)
                conn.execute(
                    reservation_lines.insert().values(
                        order_id=order_id,
                        product_id=PRODUCT,
                        quantity=units,
                        unit_price=PRICES[PRODUCT],
                    )
                )
        for order_id, (lines, status) in SEVERAL.items():
            summed: dict[int, int] = {}
            for product_id, units in lines:
                summed[product_id] = summed.get(product_id, 0) + units
            total = sum((PRICES[p] * n for p, n in summed.items()), Decimal(0))
            conn.execute(
                orders.insert().values(
                    id=order_id,
                    product_id=None,
                    total_price=total if status == "confirmed" else None,
                    quantity=sum(summed.values()),
                    status=status,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
            conn.execute(
                order_lines.insert(),
                [
                    {"order_id": order_id, "line_no": i, "product_id": p, "quantity": n}
                    for i, (p, n) in enumerate(lines)
                ],
            )
            conn.execute(
                stock_reservations.insert().values(
                    order_id=order_id,
                    product_id=None,
                    outcome=status,
                    quantity=sum(summed.values()),
                    created_at=NOW,
                )
            )
            if status == "confirmed":
                conn.execute(
                    reservation_lines.insert(),
                    [
                        {
                            "order_id": order_id,
                            "product_id": p,
                            "quantity": n,
                            "unit_price": PRICES[p],
                        }
                        for p, n in summed.items()
                    ],
                )
    yield f"sqlite:///{path}", engine
    engine.dispose()


def _run(engine: sa.Engine, *statements: sa.Executable) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


async def test_a_consistent_database_passes_every_check(database: tuple[str, sa.Engine]) -> None:
    url, _ = database
    assert await stock_violations(url, INITIAL, ACCEPTED) == []
    assert await ledger_violations(url) == []
    assert await ledger_violations(url, [PRODUCT, OTHER]) == []
    assert await line_violations(url, ACCEPTED, PRICES) == []
    assert await several_lines_confirmed(url, ACCEPTED) == []
    assert await cancel_violations(url, ACCEPTED, {3, 5}, {2}) == []
    assert await unconsumed_events(url) == 0
    figures = await order_figures(url)
    assert "one line: 3 (1 cancelled, 1 confirmed, 1 failed)" in figures
    assert "several lines: 2 (1 cancelled, 1 confirmed)" in figures
    assert "lines of confirmed orders 4" in figures  # order 1's one, order 4's three


async def test_a_unit_taken_twice_is_reported(database: tuple[str, sa.Engine]) -> None:
    url, engine = database
    _run(engine, products.update().where(products.c.id == PRODUCT).values(qty=5))
    found = await stock_violations(url, INITIAL, ACCEPTED)
    assert found == [
        f"product {PRODUCT}: confirmed reservations' lines hold 4 units but 5 units were "
        "taken (10 -> 5)"
    ]
    assert "ledger adds up to 10 - qty 5" in " ".join(await ledger_violations(url))


async def test_a_line_of_an_order_of_several_not_reserved_is_reported(
    database: tuple[str, sa.Engine],
) -> None:
    """Order 4 confirmed, but its reservation lost OTHER's line, and OTHER's stock shows
    nothing taken: per product the ledger adds up, only the lines tell."""
    url, engine = database
    _run(
        engine,
        reservation_lines.delete().where(
            reservation_lines.c.order_id == 4, reservation_lines.c.product_id == OTHER
        ),
        products.update().where(products.c.id == OTHER).values(qty=OTHER_STOCK),
    )
    assert await ledger_violations(url) == []
    assert await stock_violations(url, INITIAL, ACCEPTED) == [
        f"product {OTHER}: confirmed orders' lines ask 2 units, confirmed reservations' "
        "lines hold 0"
    ]
    found = await line_violations(url, ACCEPTED, PRICES)
    assert any("confirmed orders whose reservation lines are not their lines" in f for f in found)
    assert any(
        f"4: ordered {{{PRODUCT}: 2, {OTHER}: 2}}, reserved {{{PRODUCT}: 2}}" in f for f in found
    )


async def test_lines_at_another_price_or_a_wrong_total_are_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    _run(
        engine,
        reservation_lines.update()
        .where(reservation_lines.c.order_id == 4, reservation_lines.c.product_id == OTHER)
        .values(unit_price=Decimal("3.00")),
    )
    found = await line_violations(url, ACCEPTED, PRICES)
    assert found == [
        "1 lines reserved at another price than the catalog's, "
        f"e.g. ['4: product {OTHER} at 3.00, catalog 2.50']"
    ]
    found = await line_violations(url, ACCEPTED)  # without the catalog: the total is off
    assert found == [
        "1 confirmed orders whose total is not their lines' catalog total, "
        "e.g. ['4: total 7.00, lines 8.00']"
    ]


async def test_an_order_failed_on_its_price_or_holding_lines_is_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    _run(
        engine,
        orders.update()
        .where(orders.c.id == 2)
        .values(failure='{"reason": "price_changed", "short": [], "total": "1.00"}'),
    )
    found = await line_violations(url, ACCEPTED, PRICES)
    assert found == [
        "1 orders failed price_changed although the load sent the catalog total, e.g. ['2']"
    ]
    _run(
        engine,
        reservation_lines.insert().values(order_id=2, product_id=PRODUCT, quantity=1),
    )
    found = await line_violations(url, ACCEPTED, PRICES)
    assert f"1 failed orders holding reservation lines, e.g. ['2: {{{PRODUCT}: 1}}']" in found


async def test_an_order_stored_unlike_its_shape_is_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    _run(
        engine, order_lines.delete().where(order_lines.c.order_id == 4, order_lines.c.line_no == 2)
    )
    found = await line_violations(url, ACCEPTED, PRICES)
    assert any("orders whose row's units are not their lines' sum" in f for f in found)
    assert any("confirmed orders whose reservation lines are not their lines" in f for f in found)
    _run(
        engine, order_lines.delete().where(order_lines.c.order_id == 5, order_lines.c.line_no == 1)
    )
    found = await line_violations(url, ACCEPTED, PRICES)
    assert any("orders of several lines without them in order_lines" in f for f in found)


async def test_an_accepted_order_missing_or_pending_is_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    _run(engine, orders.update().where(orders.c.id == 2).values(status="pending"))
    found = await stock_violations(url, INITIAL, [*ACCEPTED, 99])
    assert "1 accepted orders missing, e.g. [99]" in found
    assert "1 accepted orders not settled, e.g. [2]" in found


async def test_negative_stock_is_reported(database: tuple[str, sa.Engine]) -> None:
    url, engine = database
    with engine.begin() as conn:  # past the CHECK constraint, as a broken writer would be
        conn.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        conn.execute(products.update().where(products.c.id == PRODUCT).values(qty=-1))
    assert f"product {PRODUCT} has negative stock -1" in await stock_violations(
        url, INITIAL, ACCEPTED
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
    found = await stock_violations(url, INITIAL, ACCEPTED)
    assert (
        f"product {PRODUCT}: confirmed orders' lines ask 4 units, confirmed reservations' "
        "lines hold 2" in found
    )
    assert any(f"product {PRODUCT}: confirmed reservations' lines hold 2 units" in f for f in found)


async def test_a_product_without_a_ledger_entry_is_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    _run(engine, stock_adjustments.delete().where(stock_adjustments.c.product_id == PRODUCT))
    found = await ledger_violations(url)
    assert f"product {PRODUCT} has no entry in the stock ledger" in found


async def test_cancel_answers_the_database_does_not_bear_out_are_reported(
    database: tuple[str, sa.Engine],
) -> None:
    url, engine = database
    # Order 1 answered 200 (cancelled) but confirmed; order 3 answered 409 but cancelled.
    found = await cancel_violations(url, ACCEPTED, {1}, {3})
    assert found and "2 orders not as their cancel was answered" in found[0]
    # A cancelled order of several lines whose reservation still holds them.
    _run(
        engine,
        stock_reservations.update()
        .where(stock_reservations.c.order_id == 3)
        .values(outcome="confirmed"),
    )
    found = await cancel_violations(url, ACCEPTED, {3}, {2})
    assert found and "status is not their stock reservation's outcome" in found[0]
    # Order 3 cancelled, its line given back twice (the stock one unit too high).
    _run(
        engine,
        stock_reservations.update()
        .where(stock_reservations.c.order_id == 3)
        .values(outcome="cancelled"),
        products.update().where(products.c.id == PRODUCT).values(qty=LEFT[PRODUCT] + 3),
    )
    assert await cancel_violations(url, ACCEPTED, {3}, {2}) == []
    assert "ledger adds up to 10 - qty 9" in " ".join(await ledger_violations(url))


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
    assert await stock_violations(url, INITIAL, []) == ["nothing to check: no accepted order given"]
    assert await cancel_violations(url, [], {1}) == ["nothing to check: no accepted order given"]
    assert await cancel_violations(url, ACCEPTED) == [
        "nothing to check: no cancel was answered 200 or 409"
    ]
    assert await ledger_violations(url, []) == ["nothing to check: an empty list of products given"]
    assert await ledger_violations(url, [PRODUCT, 42]) == ["products [42] missing"]
    assert await line_violations(url, []) == ["nothing to check: no accepted order given"]
    assert await several_lines_confirmed(url, []) == ["nothing to check: no accepted order given"]
    assert await several_lines_confirmed(url, [1, 2, 3, 5]) == [
        "nothing to check: no order of several lines was confirmed"
    ]
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
        url,
        INITIAL,
        ACCEPTED,
        state,
        cancels,
        malformed_injected=3,
        prices=PRICES,
        several_lines=True,
    )
    assert checks[QUEUES] == ["messages left unprocessed: {'order-service.events': 2}"]
    assert checks[DEAD_LETTERS] and "'product-service.events.dlq': 4" in checks[DEAD_LETTERS][0]
    assert checks[CANCELS] == ["order 3: cancel's final answer 404"]
    assert checks[NO_OVERSELL] == checks[LINES] == checks[SEVERAL_LINES] == []
    unlooked = await invariant_checks(
        url, INITIAL, ACCEPTED, Settlement(), cancels, malformed_injected=0
    )
    assert SEVERAL_LINES not in unlooked and LINES in unlooked
    assert unlooked[QUEUES] == ["the queues were not looked at"]

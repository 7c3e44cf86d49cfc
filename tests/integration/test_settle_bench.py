"""``python -m harness.settle_bench``'s stages on the real database: each measures what it
says (a transaction per round, of the size asked), on a sandbox of its own."""

from __future__ import annotations

import sqlalchemy as sa

from harness.sandbox import Sandbox
from harness.settle_bench import WARM_ROUNDS, intake_cpu, roundtrip_cpu, settle_cpu
from orderstack.orders.repository import inbox, orders
from orderstack.storage.engine import create_engine


async def test_the_intake_side_measures_one_batch_of_the_orders_placed_at_once(
    sandbox: Sandbox,
) -> None:
    spent, sizes = await intake_cpu(sandbox, orders=4, rounds=2)
    assert len(spent) == 2 and all(seconds > 0 for seconds in spent)
    assert sizes == f"{WARM_ROUNDS + 2} x 4"  # every round, the warm-up too, one batch of 4


async def test_the_order_side_settles_every_answer_it_times(sandbox: Sandbox) -> None:
    spent = await settle_cpu(sandbox, answers=3, rounds=2, inbox=True)
    assert len(spent) == 2 and all(seconds > 0 for seconds in spent)
    engine = create_engine(sandbox.engine_url)
    try:
        async with engine.connect() as conn:
            by_status = sa.select(orders.c.status, sa.func.count()).group_by(orders.c.status)
            statuses = {status: n for status, n in await conn.execute(by_status)}
            claimed = await conn.scalar(sa.select(sa.func.count()).select_from(inbox))
    finally:
        await engine.dispose()
    # (the module's other test leaves pending orders of its own in the same database)
    assert statuses.get("confirmed") == (WARM_ROUNDS + 2) * 3
    assert claimed == (WARM_ROUNDS + 2) * 3


async def test_the_roundtrip_side_counts_no_rollback_after_a_commit(sandbox: Sandbox) -> None:
    costs = await roundtrip_cpu(sandbox, rounds=50)
    assert costs["rollbacks_per_transaction"] == 0  # the pool's reset: engine.py
    assert costs["transaction_us"] > costs["sqlalchemy_statement_us"] > 0
    assert costs["driver_statement_us"] > 0

"""A consumer's transaction alone: the CPU this process spends on one batch, on a throwaway
MariaDB database, round after round on fresh rows. Process CPU, not wall time: waiting on
the database is not counted, so other work on the box moves it far less than it moves `make
bench`'s figures; two commits compare by running it on each in turn (``PYTHONPATH=<their
tree>/src``).

``--side order`` (the default): the order consumer's, settling N one-line answers
(``OrderService.settle_orders`` in one unit of work, then its commit) on fresh pending
orders; ``--inbox`` claims their N event ids in the inbox first, as the consumer does.
``--side product``: the product consumer's, for N ``order.created`` of one unit each over
20 products (the inbox claim, ``ProductService.apply_order_events``, the commit and what
runs after it: the cache refreshed, in process here).
``--side intake``: the order intake's, storing N one-line orders placed at once
(``OrderService.create_order``: the orders, their status events and outbox rows, the
commit), with ``--answers 1`` the transaction each order has to itself at low rates.
``--side roundtrip``: what a statement and a transaction cost before they hold anything,
per ``--rounds``: a transaction of one ``SELECT 1`` through the engine (checkout,
statement, commit, check-in) with the ROLLBACKs the session ran per transaction, one
``SELECT 1`` through SQLAlchemy's ``AsyncConnection.execute``, and the same on the
driver's own connection.
``--side bus``: the RabbitMQ bus alone, per event: rounds of N ``order.created`` published
as a relay does (``--batch-events``: EVENT_BATCH_SIZE), consumed, decoded and acked in
batches as a consumer does, in this process; this process's CPU and RabbitMQ's (the whole
broker: other work on it counts too).

    python -m harness.settle_bench --answers 40 --rounds 25
    python -m harness.settle_bench --side product --answers 40
    python -m harness.settle_bench --side intake --answers 1 --rounds 200
    python -m harness.settle_bench --side roundtrip --rounds 3000
    python -m harness.settle_bench --side bus --answers 100 --batch-events 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from harness.http_ladder import cpu_ticks
from harness.sandbox import Sandbox
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.events import ORDER_CREATED, ORDER_QTY_CONFIRMED
from orderstack.infrastructure import rabbitmq_bus
from orderstack.messaging.bus import Delivery
from orderstack.messaging.envelope import Event, decode
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.orders.domain import OrderLine, OrderStatus, SettleOrder
from orderstack.orders.repository import OrderUnitOfWork
from orderstack.orders.service import OrderService
from orderstack.products.domain import ReserveStock, StockLine
from orderstack.products.repository import ProductUnitOfWork
from orderstack.products.service import ProductService
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine

WARM_ROUNDS = 3  # the first rounds compile and cache the statements: not counted


class _EveryProduct:
    """The catalog as the order service's port: every product exists."""

    async def product_exists(self, product_id: int) -> bool:
        return True

    async def warm(self, product_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        return list(product_ids), []

    async def is_up(self) -> bool:
        return True

    async def close(self) -> None:
        return None


PRODUCTS = 20  # the products the product side's orders take from


@contextlib.contextmanager
def _counted(round_: int, spent: list[float]) -> Iterator[None]:
    """The process CPU the block takes, appended to ``spent`` past the warm-up rounds."""
    started = time.process_time()
    yield
    if round_ >= WARM_ROUNDS:
        spent.append(time.process_time() - started)


@contextlib.asynccontextmanager
async def _order_side(sandbox: Sandbox) -> AsyncIterator[tuple[AsyncEngine, OrderService]]:
    """The order service on the sandbox's database, migrated, every product existing."""
    engine = create_engine(sandbox.engine_url)
    try:
        await migrate.upgrade(engine, "orders")
        yield engine, OrderService(lambda: OrderUnitOfWork(engine, None), _EveryProduct())
    finally:
        await engine.dispose()


async def settle_cpu(
    sandbox: Sandbox, answers: int, rounds: int, *, inbox: bool = False
) -> list[float]:
    """Seconds of this process's CPU per settling transaction, one per round after the
    warm-up rounds; with ``inbox``, the answers' event ids claimed in it first."""
    async with _order_side(sandbox) as (engine, service):
        spent: list[float] = []
        for round_ in range(WARM_ROUNDS + rounds):
            made = await asyncio.gather(
                *(service.create_order(1 + i % 5, Decimal(10)) for i in range(answers))
            )
            settle = [
                SettleOrder(
                    order.id,
                    OrderStatus.CONFIRMED,
                    (OrderLine(order.items[0].product_id, 1, Decimal(10)),),
                    Decimal(10),
                )
                for order, _ in made
            ]
            events = [Event(ORDER_QTY_CONFIRMED.name, {"orderId": a.order_id}) for a in settle]
            with _counted(round_, spent):
                async with OrderUnitOfWork(engine, None) as uow:
                    if inbox:
                        await uow.inbox.claim(events)
                    await service.settle_orders(uow, settle)
                    await uow.commit()
        return spent


async def intake_cpu(sandbox: Sandbox, orders: int, rounds: int) -> tuple[list[float], str]:
    """Seconds of this process's CPU per round of ``orders`` orders placed at once, one per
    round after the warm-up rounds, and the intake's batch sizes (how many transactions a
    round took)."""
    async with _order_side(sandbox) as (_, service):
        spent: list[float] = []
        for round_ in range(WARM_ROUNDS + rounds):
            with _counted(round_, spent):
                await asyncio.gather(
                    *(service.create_order(1 + i % 5, Decimal(10)) for i in range(orders))
                )
        sizes = ", ".join(f"{n} x {size}" for size, n in sorted(service.intake_batch_sizes.items()))
        return spent, sizes


async def reserve_cpu(sandbox: Sandbox, orders: int, rounds: int) -> list[float]:
    """Seconds of this process's CPU per product consumer's transaction for ``orders``
    one-unit ``order.created`` over ``PRODUCTS`` products, one per round after the warm-up
    rounds."""
    engine = create_engine(sandbox.engine_url)
    try:
        await migrate.upgrade(engine, "products")
        service = ProductService(lambda: ProductUnitOfWork(engine, None), InProcessProductCache())
        made = [
            await service.create_product(f"bench-{i}", Decimal(10), orders * (rounds + 10))
            for i in range(PRODUCTS)
        ]
        spent: list[float] = []
        next_order = 1
        for round_ in range(WARM_ROUNDS + rounds):
            commands = [
                ReserveStock(
                    next_order + i,
                    lines=(StockLine(made[i % PRODUCTS].id, 1),),
                    agreed_total=Decimal(10),
                )
                for i in range(orders)
            ]
            next_order += orders
            events = [Event(ORDER_CREATED.name, {"orderId": c.order_id}) for c in commands]
            with _counted(round_, spent):
                async with ProductUnitOfWork(engine, None) as uow:
                    await uow.inbox.claim(events)
                    await service.apply_order_events(uow, commands)
                    await uow.commit()
        return spent
    finally:
        await engine.dispose()


async def _rollbacks(conn: AsyncConnection) -> int:
    """The ROLLBACKs this session has run (MariaDB, MySQL)."""
    row = (await conn.execute(sa.text("SHOW SESSION STATUS LIKE 'Com_rollback'"))).one()
    await conn.commit()
    return int(row[1])


async def roundtrip_cpu(sandbox: Sandbox, rounds: int) -> dict[str, float]:
    """Microseconds of this process's CPU per transaction of one ``SELECT 1`` through the
    engine, per ``SELECT 1`` through SQLAlchemy and per ``SELECT 1`` on the driver itself;
    and the session's ROLLBACKs per transaction (one pooled connection throughout)."""
    engine = create_engine(sandbox.engine_url, pool_size=1)
    one = sa.text("SELECT 1")
    found: dict[str, float] = {}
    try:
        async with engine.connect() as conn:
            before = await _rollbacks(conn)
        started = time.process_time()
        for _ in range(rounds):
            async with engine.begin() as conn:
                await conn.execute(one)
        found["transaction_us"] = 1e6 * (time.process_time() - started) / rounds
        async with engine.connect() as conn:
            # The probe's own commit ends its transaction: it adds no ROLLBACK.
            found["rollbacks_per_transaction"] = (await _rollbacks(conn) - before) / rounds
            started = time.process_time()
            for _ in range(rounds):
                (await conn.execute(one)).all()
            found["sqlalchemy_statement_us"] = 1e6 * (time.process_time() - started) / rounds
            driver: Any = (await conn.get_raw_connection()).driver_connection
            started = time.process_time()
            for _ in range(rounds):
                async with driver.cursor() as cursor:
                    await cursor.execute("SELECT 1")
                    await cursor.fetchall()
            found["driver_statement_us"] = 1e6 * (time.process_time() - started) / rounds
            await conn.rollback()
    finally:
        await engine.dispose()
    return found


async def bus_cpu(
    sandbox: Sandbox, broker: int, round_size: int, rounds: int, batch_events: int
) -> tuple[float, float]:
    """Microseconds of CPU per event, (this process, RabbitMQ), for ``rounds`` rounds of
    ``round_size`` events published, consumed, decoded and acked (50 at a time); ``broker``:
    RabbitMQ's process id."""
    bus = rabbitmq_bus(sandbox.amqp_url, batch_events=batch_events)
    await bus.start()
    total = round_size * rounds
    held: list[Delivery] = []
    done = asyncio.Event()
    seen = 0

    async def on_delivery(delivery: Delivery) -> None:
        nonlocal seen
        decode(
            delivery.body,
            message_id=delivery.message_id,
            routing_key=delivery.routing_key,
            headers=delivery.headers,
        )
        held.append(delivery)
        seen += 1
        if len(held) >= 50 or seen >= total:
            batch = held[:]
            held.clear()
            await bus.ack_all(batch)
        if seen >= total:
            done.set()

    try:
        await bus.consume(PRODUCT_SERVICE_QUEUE, on_delivery, 200)
        broker_before, started = cpu_ticks(broker), time.process_time()
        for round_ in range(rounds):
            first = round_ * round_size
            await bus.publish(
                [
                    Event(
                        ORDER_CREATED.name,
                        {"orderId": first + i, "productId": 1, "quantity": 1},
                        request_id=f"bench-{first + i}",
                    )
                    for i in range(round_size)
                ]
            )
        await asyncio.wait_for(done.wait(), 300)
        mine = time.process_time() - started
        theirs = (cpu_ticks(broker) - broker_before) / os.sysconf("SC_CLK_TCK")
    finally:
        await bus.close()
    return 1e6 * mine / total, 1e6 * theirs / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.settle_bench", description=__doc__)
    parser.add_argument("--answers", type=int, default=40, help="answers per transaction")
    parser.add_argument("--rounds", type=int, default=25, help="transactions measured")
    parser.add_argument(
        "--side",
        choices=("order", "product", "intake", "roundtrip", "bus"),
        default="order",
        help="the order consumer's settling (default), the product consumer's stock take, "
        "the order intake's write (--answers: orders placed at once), a statement's and a "
        "transaction's own cost (roundtrip), or the RabbitMQ bus alone (--answers: events "
        "per relay round)",
    )
    parser.add_argument(
        "--batch-events",
        type=int,
        default=1,
        help="bus side: events of one name per message (EVENT_BATCH_SIZE; default 1)",
    )
    parser.add_argument(
        "--inbox", action="store_true", help="order side: claim the answers in the inbox first"
    )
    args = parser.parse_args(argv)
    sandbox = Sandbox("settle").create()
    try:
        if args.side == "bus":
            found = subprocess.run(
                ["pgrep", "-o", "-f", "beam.smp"], capture_output=True, text=True
            )
            pid = int(found.stdout.split()[0])
            mine, broker = asyncio.run(
                bus_cpu(sandbox, pid, args.answers, args.rounds, args.batch_events)
            )
            print(
                f"{args.answers * args.rounds} events in rounds of {args.answers}, "
                f"{args.batch_events} per message at most: {mine:.1f} us of this process's "
                f"CPU and {broker:.1f} us of RabbitMQ's per event"
            )
            return
        if args.side == "roundtrip":
            costs = asyncio.run(roundtrip_cpu(sandbox, args.rounds))
            print(
                f"per transaction of one SELECT 1 (checkout, statement, commit, check-in): "
                f"{costs['transaction_us']:.1f} us of CPU, "
                f"{costs['rollbacks_per_transaction']:.3f} ROLLBACKs; per SELECT 1 through "
                f"SQLAlchemy: {costs['sqlalchemy_statement_us']:.1f} us, on the driver: "
                f"{costs['driver_statement_us']:.1f} us ({args.rounds} each)"
            )
            return
        if args.side == "intake":
            spent, sizes = asyncio.run(intake_cpu(sandbox, args.answers, args.rounds))
            median = 1000 * statistics.median(spent)
            print(
                f"{args.answers} orders placed at once: median {median:.3f} ms, min "
                f"{1000 * min(spent):.3f} ms of CPU per round ({len(spent)} rounds; "
                f"intake batches, count x size: {sizes})"
            )
            return
        if args.side == "product":
            spent = asyncio.run(reserve_cpu(sandbox, args.answers, args.rounds))
        else:
            spent = asyncio.run(settle_cpu(sandbox, args.answers, args.rounds, inbox=args.inbox))
    finally:
        sandbox.drop()
    what = "order.created" if args.side == "product" else "answers"
    print(
        f"{args.answers} {what} per transaction: median {1000 * statistics.median(spent):.2f} "
        f"ms, min {1000 * min(spent):.2f} ms of CPU ({len(spent)} rounds)"
    )


if __name__ == "__main__":
    main()

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

    python -m harness.settle_bench --answers 40 --rounds 25
    python -m harness.settle_bench --side product --answers 40
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from decimal import Decimal

from harness.sandbox import Sandbox
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.events import ORDER_CREATED, ORDER_QTY_CONFIRMED
from orderstack.messaging.envelope import Event
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


async def settle_cpu(
    sandbox: Sandbox, answers: int, rounds: int, *, inbox: bool = False
) -> list[float]:
    """Seconds of this process's CPU per settling transaction, one per round after the
    warm-up rounds; with ``inbox``, the answers' event ids claimed in it first."""
    engine = create_engine(sandbox.engine_url)
    try:
        await migrate.upgrade(engine, "orders")
        service = OrderService(lambda: OrderUnitOfWork(engine, None), _EveryProduct())
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
            started = time.process_time()
            async with OrderUnitOfWork(engine, None) as uow:
                if inbox:
                    await uow.inbox.claim(events)
                await service.settle_orders(uow, settle)
                await uow.commit()
            if round_ >= WARM_ROUNDS:
                spent.append(time.process_time() - started)
        return spent
    finally:
        await engine.dispose()


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
            started = time.process_time()
            async with ProductUnitOfWork(engine, None) as uow:
                await uow.inbox.claim(events)
                await service.apply_order_events(uow, commands)
                await uow.commit()
            if round_ >= WARM_ROUNDS:
                spent.append(time.process_time() - started)
        return spent
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.settle_bench", description=__doc__)
    parser.add_argument("--answers", type=int, default=40, help="answers per transaction")
    parser.add_argument("--rounds", type=int, default=25, help="transactions measured")
    parser.add_argument(
        "--side",
        choices=("order", "product"),
        default="order",
        help="the order consumer's settling (default) or the product consumer's stock take",
    )
    parser.add_argument(
        "--inbox", action="store_true", help="order side: claim the answers in the inbox first"
    )
    args = parser.parse_args(argv)
    sandbox = Sandbox("settle").create()
    try:
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

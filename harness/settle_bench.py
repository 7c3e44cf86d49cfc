"""The order consumer's transaction alone: the CPU this process spends settling a batch of
N one-line answers (``OrderService.settle_orders`` in one unit of work, then its commit) on
a throwaway MariaDB database, round after round on fresh pending orders. Process CPU, not
wall time: waiting on the database is not counted, so other work on the box moves it far
less than it moves `make bench`'s figures; two commits compare by running it on each in
turn (``PYTHONPATH=<their tree>/src``).

    python -m harness.settle_bench --answers 40 --rounds 25
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from decimal import Decimal

from harness.sandbox import Sandbox
from orderstack.orders.domain import OrderLine, OrderStatus, SettleOrder
from orderstack.orders.repository import OrderUnitOfWork
from orderstack.orders.service import OrderService
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


async def settle_cpu(sandbox: Sandbox, answers: int, rounds: int) -> list[float]:
    """Seconds of this process's CPU per settling transaction, one per round after the
    warm-up rounds."""
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
            started = time.process_time()
            async with OrderUnitOfWork(engine, None) as uow:
                await service.settle_orders(uow, settle)
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
    args = parser.parse_args(argv)
    sandbox = Sandbox("settle").create()
    try:
        spent = asyncio.run(settle_cpu(sandbox, args.answers, args.rounds))
    finally:
        sandbox.drop()
    print(
        f"{args.answers} answers per transaction: median {1000 * statistics.median(spent):.2f} "
        f"ms, min {1000 * min(spent):.2f} ms of CPU ({len(spent)} rounds)"
    )


if __name__ == "__main__":
    main()

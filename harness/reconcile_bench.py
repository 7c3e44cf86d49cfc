"""How long ``orderstack reconcile`` (and one round of ``stock_drift_units``) takes on a big
database: ``python -m harness.reconcile_bench [--products N] [--database mariadb]``.

It creates a throwaway sandbox database on the server (harness/sandbox.py), migrates both
services' tables, and seeds them in bulk as the services would have left them: N products
of 10 units, each with its opening ledger entry; two of every three products held by one
confirmed one-line order of 1 unit (its reservation and reservation line), one in ten of
those a hold (``reserved``); then ``DRIFTED`` products' stock changed behind the services'
back. It times, on the seeded tables: the check's statements in process (``reconcile()``),
the command as an operator runs it (``python -m orderstack reconcile --json``, the
interpreter's start included), and one round of the product service's drift gauge
(``read_drift``, products/drift.py), each the median of ``--runs``; it checks that each
found exactly the drift seeded, prints the figures, and drops the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.processes import SERVER_VARIABLES
from harness.sandbox import Sandbox
from orderstack import reconcile
from orderstack.orders.repository import orders
from orderstack.products.drift import read_drift
from orderstack.products.repository import (
    products,
    reservation_lines,
    stock_adjustments,
    stock_reservations,
)
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow

CHUNK = 5_000
OPENING = 10
DRIFTED = 10  # products whose qty is changed behind the services' back, +1 each


def _chunks(rows: Sequence[Mapping[str, object]]) -> Iterator[Sequence[Mapping[str, object]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


async def seed(engine: AsyncEngine, count: int) -> int:
    """The tables as the services leave them for ``count`` products; returns the orders."""
    now = utcnow()
    held_ids = [i for i in range(1, count + 1) if i % 3]
    product_rows = [
        {
            "id": i,
            "name": f"P{i}",
            "price": Decimal("9.99"),
            # Held by its order (2 in 3), or one of the DRIFTED changed behind its back.
            "qty": OPENING - (1 if i % 3 else 0) + (1 if i <= DRIFTED * 3 and i % 3 == 0 else 0),
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(1, count + 1)
    ]
    ledger_rows = [
        {
            "product_id": i,
            "delta": OPENING,
            "reason": "created",
            "qty_after": OPENING,
            "created_at": now,
        }
        for i in range(1, count + 1)
    ]
    order_rows = [
        {
            "id": n,
            "product_id": p,
            "quantity": 1,
            "total_price": Decimal("9.99"),
            "unit_price": Decimal("9.99"),
            "status": "reserved" if n % 10 == 0 else "confirmed",
            "expires_at": now + timedelta(hours=1) if n % 10 == 0 else None,
            "hold_seconds": 3600 if n % 10 == 0 else None,
            "created_at": now,
            "updated_at": now,
        }
        for n, p in enumerate(held_ids, start=1)
    ]
    reservation_rows = [
        {"order_id": n, "product_id": p, "outcome": "confirmed", "quantity": 1, "created_at": now}
        for n, p in enumerate(held_ids, start=1)
    ]
    line_rows = [
        {"order_id": n, "product_id": p, "quantity": 1, "unit_price": Decimal("9.99")}
        for n, p in enumerate(held_ids, start=1)
    ]
    for table, rows in (
        (products, product_rows),
        (stock_adjustments, ledger_rows),
        (orders, order_rows),
        (stock_reservations, reservation_rows),
        (reservation_lines, line_rows),
    ):
        for chunk in _chunks(rows):
            async with engine.begin() as conn:
                await conn.execute(table.insert(), list(chunk))
    return len(order_rows)


def _command(database_url: str) -> tuple[float, dict[str, object]]:
    clean = {k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orderstack", "reconcile", "--json", "--limit", "5"],
        env={**clean, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"reconcile exited {done.returncode}: {done.stderr}")
    body: dict[str, object] = orjson.loads(done.stdout)
    return took, body


async def bench(sandbox: Sandbox, count: int, runs: int) -> None:
    database = sandbox.database
    engine = create_engine(sandbox.engine_url, pool_size=2)
    try:
        for service in ("orders", "products"):
            await migrate.upgrade(engine, service)
        started = time.perf_counter()
        placed = await seed(engine, count)
        print(
            f"seeded {count} products, {placed} orders (one in ten a hold) on {database} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        checks, commands, rounds = [], [], []
        for _ in range(runs):
            started = time.perf_counter()
            report = await reconcile.reconcile(engine, pending_older_than=3600, limit=5)
            checks.append(time.perf_counter() - started)
            assert report.counts[reconcile.STOCK_DRIFT] == DRIFTED, report.counts
            assert sum(report.counts.values()) == DRIFTED, report.counts
            took, body = _command(sandbox.database_url)
            commands.append(took)
            counts = body["counts"]
            assert isinstance(counts, dict) and counts["stock_drift"] == DRIFTED, body
            async with engine.connect() as conn:
                started = time.perf_counter()
                reading = await read_drift(conn, time.time())
                rounds.append(time.perf_counter() - started)
            assert (reading.drift_units, reading.drifted) == (DRIFTED, DRIFTED), reading
        print(
            f"reconcile, statements in process: median {statistics.median(checks):.2f} s "
            f"(runs: {', '.join(f'{t:.2f}' for t in checks)})"
        )
        print(
            f"python -m orderstack reconcile --json: median {statistics.median(commands):.2f} s "
            f"(interpreter start included; runs: {', '.join(f'{t:.2f}' for t in commands)})"
        )
        print(f"one stock_drift_units round (read_drift): median {statistics.median(rounds):.2f} s")
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.reconcile_bench")
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--database", choices=("mariadb", "postgresql"), default="mariadb")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    database: Literal["mariadb", "postgresql"] = args.database
    sandbox = Sandbox("rcbench", database=database).create()  # its own event loop
    try:
        asyncio.run(bench(sandbox, args.products, args.runs))
    finally:
        sandbox.drop()


if __name__ == "__main__":
    main()

"""`make chaos`: replicas of both services under a steady stream of orders while faults are
injected (kill -9 of replicas, a RabbitMQ outage, a Redis pause, a database stall, malformed
messages); then the invariants are checked from the databases and the broker.

    python -m orderstack.harness.chaos --help

Every fault is undone in a ``finally``: the servers are left as they were found.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncmy
import httpx
import orjson
import redis.asyncio as aioredis

from orderstack.harness import sandbox as servers
from orderstack.harness.invariants import stock_violations, wait_settled
from orderstack.harness.load import LoadResult, drive_orders
from orderstack.harness.sandbox import Sandbox
from orderstack.harness.stack import Stack
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE

FAULTS = ("kill", "rabbitmq", "redis", "database", "malformed")


@dataclass
class ChaosConfig:
    product_replicas: int = 3
    order_replicas: int = 2
    orders: int = 3000
    rate: float = 150.0  # orders per second
    products: int = 5
    stock_ratio: float = 0.6  # total stock / demand
    fault_interval: float = 4.0
    faults: tuple[str, ...] = FAULTS
    outage_seconds: float = 3.0
    settle_timeout: float = 120.0
    seed: int = 7
    log_dir: Path | None = None


@dataclass
class ChaosReport:
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    confirmed: int = 0
    failed: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    malformed_injected: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    settle_seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"orders accepted (201): {self.accepted}",
            f"orders rejected: {dict(self.rejected) or 'none'}",
            f"settled: {self.confirmed} confirmed, {self.failed} failed "
            f"in {self.settle_seconds:.1f}s after the load stopped",
            f"faults injected: {dict(self.faults)}",
            f"malformed messages injected: {self.malformed_injected}; "
            f"dead-letter queues: {self.dead_letters}",
            "invariants: " + ("all hold" if not self.violations else "VIOLATED"),
            *[f"  - {v}" for v in self.violations],
        ]
        return "\n".join(lines)


class Faults:
    """Injects one fault at a time and always undoes it."""

    def __init__(
        self, stack: Stack, config: ChaosConfig, rng: random.Random, report: ChaosReport
    ) -> None:
        self.stack, self.config, self.rng, self.report = stack, config, rng, report

    async def inject(self, kind: str) -> None:
        self.report.faults[kind] += 1
        await getattr(self, f"_{kind}")()

    async def _kill(self) -> None:
        victim = self.rng.choice([*self.stack.products, *self.stack.orders])
        victim.kill()
        await asyncio.sleep(self.rng.uniform(0.5, 1.5))
        victim.start()

    async def _rabbitmq(self) -> None:
        try:
            await _run("rabbitmqctl", "-q", "stop_app")
            await asyncio.sleep(self.config.outage_seconds)
        finally:
            await _run("rabbitmqctl", "-q", "start_app")

    async def _redis(self) -> None:
        client = aioredis.Redis(host=servers.REDIS_HOST, port=servers.REDIS_PORT)
        try:
            # Every client blocks until the pause ends, as if the server hung.
            await client.execute_command(
                "CLIENT", "PAUSE", int(self.config.outage_seconds * 1000), "ALL"
            )
            await asyncio.sleep(self.config.outage_seconds)
        finally:
            await client.execute_command("CLIENT", "UNPAUSE")
            await client.aclose()

    async def _database(self) -> None:
        conn = await asyncmy.connect(
            host=servers.MYSQL_HOST,
            port=servers.MYSQL_PORT,
            user=servers.MYSQL_USER,
            password=servers.MYSQL_PASSWORD,
        )
        try:
            async with conn.cursor() as cursor:
                # Writes on the whole server wait while this lock is held: a stall.
                await cursor.execute("FLUSH TABLES WITH READ LOCK")
                await asyncio.sleep(min(self.config.outage_seconds, 2.0))
                await cursor.execute("UNLOCK TABLES")
        finally:
            conn.close()

    async def _malformed(self) -> None:
        bodies = [
            b"not json",
            b"[]",
            orjson.dumps({"pattern": "order.created", "data": {"orderId": "x", "productId": 1}}),
        ]
        connection = await aio_pika.connect(self.stack.sandbox.amqp_url, timeout=5)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(EXCHANGE)
            for body in bodies:
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        message_id=str(uuid.uuid4()),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key="order.created",
                )
        finally:
            await connection.close()
        self.report.malformed_injected += len(bodies)


async def _run(*command: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await asyncio.wait_for(process.wait(), 120)


def _progress(total: int) -> Callable[[LoadResult], None]:
    def show(result: LoadResult) -> None:
        print(
            f"\r  orders sent {result.sent}/{total}, accepted {len(result.accepted)}, "
            f"rejected {sum(result.rejected.values())}",
            end="",
            flush=True,
        )

    return show


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    rng = random.Random(config.seed)
    report = ChaosReport()
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="orderstack-chaos-"))
    sandbox = await asyncio.to_thread(Sandbox("chaos").create)
    stack = Stack(sandbox, log_dir, config.product_replicas, config.order_replicas)
    try:
        stack.start()
        total_stock = int(config.orders * config.stock_ratio)
        initial: dict[int, int] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(config.products):
                qty = total_stock // config.products + (
                    1 if i < total_stock % config.products else 0
                )
                response = await client.post(
                    f"{stack.product_url}/products",
                    json={"name": f"chaos-{i}", "price": 10, "qty": qty},
                )
                response.raise_for_status()
                initial[response.json()["id"]] = qty
        faults = Faults(stack, config, rng, report)
        load = asyncio.create_task(
            drive_orders(
                [p.url for p in stack.orders],
                list(initial),
                count=config.orders,
                rate=config.rate,
                rng=rng,
                progress=_progress(config.orders),
            )
        )
        schedule = list(config.faults)
        n = 0
        # Faults go on while orders flow, and at least until each kind has been injected
        # once (the later ones then hit the system while it settles).
        while not load.done() or n < len(schedule):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(load), config.fault_interval)
            await faults.inject(schedule[n % len(schedule)])
            n += 1
        result = await load
        print()
        accepted = result.accepted
        report.rejected = result.rejected
        for process in [*stack.products, *stack.orders]:
            if not process.alive():
                process.start()
        state, report.settle_seconds = await wait_settled(
            sandbox.database_url, sandbox.amqp_url, config.settle_timeout
        )
        report.accepted = len(accepted)
        report.confirmed = state.by_status.get("confirmed", 0)
        report.failed = state.by_status.get("failed", 0)
        report.dead_letters = {k: v for k, v in state.queue_depths.items() if k.endswith(".dlq")}
        report.violations = await stock_violations(sandbox.database_url, initial, accepted)
        if state.pending:
            report.violations.append(f"{state.pending} orders still pending")
        if state.unsent_events:
            report.violations.append(f"{state.unsent_events} events stuck in the outboxes")
        work_left = {k: v for k, v in state.queue_depths.items() if not k.endswith(".dlq") and v}
        if work_left:
            report.violations.append(f"messages left unprocessed: {work_left}")
        expected_dlq = {PRODUCT_SERVICE_QUEUE.dead_letter_queue: report.malformed_injected}
        unexpected = {k: v for k, v in report.dead_letters.items() if v != expected_dlq.get(k, 0)}
        if unexpected:
            report.violations.append(
                f"dead-letter queues hold {unexpected}, expected {expected_dlq}"
            )
        return report
    finally:
        stack.stop()
        await asyncio.to_thread(sandbox.drop)
        print(f"service logs: {log_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="orderstack-chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ChaosConfig()
    parser.add_argument("--product-replicas", type=int, default=defaults.product_replicas)
    parser.add_argument("--order-replicas", type=int, default=defaults.order_replicas)
    parser.add_argument("--orders", type=int, default=defaults.orders)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="orders per second")
    parser.add_argument("--products", type=int, default=defaults.products)
    parser.add_argument("--stock-ratio", type=float, default=defaults.stock_ratio)
    parser.add_argument("--fault-interval", type=float, default=defaults.fault_interval)
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated, from {','.join(FAULTS)}"
    )
    parser.add_argument("--settle-timeout", type=float, default=defaults.settle_timeout)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {sorted(unknown)}")
    config = ChaosConfig(
        product_replicas=args.product_replicas,
        order_replicas=args.order_replicas,
        orders=args.orders,
        rate=args.rate,
        products=args.products,
        stock_ratio=args.stock_ratio,
        fault_interval=args.fault_interval,
        faults=faults,
        settle_timeout=args.settle_timeout,
        seed=args.seed,
    )
    started = time.monotonic()
    report = asyncio.run(run_chaos(config))
    print(report.render())
    print(
        f"total run time {time.monotonic() - started:.0f}s; reproduce with: "
        f"python -m orderstack.harness.chaos {' '.join(argv or sys.argv[1:])}"
    )
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

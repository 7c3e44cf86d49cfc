"""`make chaos`: faults injected under a steady stream of orders, then every invariant of
SPEC.md checked from the databases, the broker and the cache. Two scenarios:

- servers (the default): replicas of both services as separate processes on MariaDB
  (or ``--database postgresql``), RabbitMQ and Redis; in turn kill -9 of a replica, the
  services' database connections killed (MariaDB: ``KILL CONNECTION``; PostgreSQL:
  ``pg_terminate_backend``), a RabbitMQ outage, a Redis pause, a database stall, malformed
  messages. After the run every ``product:{id}`` in Redis is compared with its row.
- ``--embedded``: ``orderstack dev`` (SQLite and the durable local bus) on a throwaway
  working directory, stopped by SIGINT and kill -9 in turn and restarted on the same files.
- ``--cluster``: a 3-node RabbitMQ cluster and HAProxy in front of the replicas; broker
  nodes killed (kill -9) and brought back among the other faults; throughput and latency
  before, during and after each node loss (harness/cluster_chaos.py).

    python -m harness.chaos --help

Every fault is undone in a ``finally``: the servers are left as they were found. Faults
only ever target servers on this machine's loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aio_pika
import asyncmy
import asyncpg
import httpx
import orjson
import redis.asyncio as aioredis

from harness import sandbox as servers
from harness.cancels import Canceller, CancelResult
from harness.invariants import (
    cancel_violations,
    ledger_violations,
    settlement,
    stock_violations,
    wait_cache_consistent,
    wait_settled,
)
from harness.load import LoadResult, drive_orders
from harness.processes import ServiceProcess, free_port
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE
from orderstack.orders.repository import orders as orders_table
from orderstack.products.repository import products as products_table

FAULTS = ("kill", "connections", "rabbitmq", "redis", "database", "malformed")
FAULT_NAMES = {
    "kill": "kill -9 of a replica",
    "connections": "KILL CONNECTION of the services' MariaDB connections",
    "rabbitmq": "RabbitMQ outage",
    "redis": "Redis pause",
    "database": "database stall (FLUSH TABLES WITH READ LOCK)",
    "malformed": "malformed messages",
}
# The same faults on PostgreSQL: its two database faults are made its own way.
POSTGRESQL_FAULT_NAMES = {
    **FAULT_NAMES,
    "connections": "pg_terminate_backend of the services' PostgreSQL connections",
    "database": "database stall (LOCK TABLE products, orders IN ACCESS EXCLUSIVE MODE)",
}
DATABASE_NAMES = {"mariadb": "MariaDB", "postgresql": "PostgreSQL"}
# The harness's own connections to the sandbox's PostgreSQL database (the stall's): the
# connection killer leaves them alone.
HARNESS_APPLICATION_NAME = "orderstack-chaos"

# The names of the invariant checks, in the order the report lists them.
SETTLED = "every accepted order exists and is confirmed, failed or cancelled"
NO_OVERSELL = "no oversell: per product confirmed orders = units taken, stock >= 0"
LEDGER = "stock ledger: units confirmed = adjustments - qty"
OUTBOXES = "outboxes empty"
QUEUES = "work queues empty"
DEAD_LETTERS = "dead-letter queues hold exactly the malformed messages"
CACHE = "cache = database: product:{id} has the row's version and qty, tombstone if deleted"
CANCELS = (
    "cancels: answered 200 -> cancelled, 409 -> failed; each order's status = its stock "
    "reservation's outcome; the API's answers consistent"
)
CATALOGUE = "catalogue changes during the run applied (a delete, a stock adjustment)"
CLEAN_STOP = "SIGINT drains and exits within the bound"


def _classify_stock(violations: list[str]) -> tuple[list[str], list[str]]:
    """stock_violations' findings split into (settlement, oversell) ones."""
    settled = [v for v in violations if "accepted orders" in v]
    return settled, [v for v in violations if v not in settled]


def _render_checks(checks: dict[str, list[str]]) -> list[str]:
    lines = ["invariants: " + ("all hold" if not any(checks.values()) else "VIOLATED")]
    for name, problems in checks.items():
        lines.append(f"  {'ok  ' if not problems else 'FAIL'}  {name}")
        lines.extend(f"          - {p}" for p in problems[:20])
        if len(problems) > 20:
            lines.append(f"          ... and {len(problems) - 20} more")
    return lines


def _flatten(checks: dict[str, list[str]]) -> list[str]:
    return [f"{name}: {problem}" for name, problems in checks.items() for problem in problems]


def _require_loopback(*hosts: str) -> None:
    """Faults stop servers, kill their connections and lock their tables: only ever on
    this machine."""
    for host in hosts:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
            raise SystemExit(f"chaos refuses to inject faults into {host}: not a loopback address")


# --- servers ----------------------------------------------------------------------------


@dataclass
class ChaosConfig:
    product_replicas: int = 3
    order_replicas: int = 2
    orders: int = 3000
    rate: float = 150.0  # orders per second
    products: int = 5
    stock_ratio: float = 0.6  # total stock / demand (in units)
    max_quantity: int = 5  # each order asks for 1 to this many units
    cancel_fraction: float = 0.15  # share of the accepted orders their clients cancel
    fault_interval: float = 4.0
    faults: tuple[str, ...] = FAULTS
    outage_seconds: float = 3.0
    connection_kill_rounds: int = 3  # KILL CONNECTION rounds per "connections" fault
    connection_kill_every: float = 5.0  # and one round this often during the load; 0: off
    cache_repair_interval: float = 5.0  # CACHE_REPAIR_INTERVAL_SECONDS of the services
    pending_resend_seconds: float | None = None  # ORDER_PENDING_RESEND_SECONDS; None: default
    settle_timeout: float = 120.0
    seed: int = 7
    log_dir: Path | None = None
    database: Literal["mariadb", "postgresql"] = "mariadb"  # where the sandbox's database is

    def command(self) -> str:
        """The command that runs this configuration again."""
        args = [
            f"--product-replicas {self.product_replicas}",
            f"--order-replicas {self.order_replicas}",
            f"--orders {self.orders}",
            f"--rate {self.rate:g}",
            f"--products {self.products}",
            f"--stock-ratio {self.stock_ratio:g}",
            f"--max-quantity {self.max_quantity}",
            f"--cancel-fraction {self.cancel_fraction:g}",
            f"--fault-interval {self.fault_interval:g}",
            f"--connection-kill-every {self.connection_kill_every:g}",
            f"--faults {','.join(self.faults)}",
            f"--cache-repair-interval {self.cache_repair_interval:g}",
            f"--seed {self.seed}",
        ]
        if self.pending_resend_seconds is not None:
            args.append(f"--pending-resend-seconds {self.pending_resend_seconds:g}")
        if self.database != "mariadb":
            args.append(f"--database {self.database}")
        return f'make chaos ARGS="{" ".join(args)}"'


@dataclass
class ChaosReport:
    sent: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    confirmed: int = 0
    failed: int = 0
    cancelled: int = 0
    pending: int = 0
    cancels: CancelResult = field(default_factory=CancelResult)
    faults: Counter[str] = field(default_factory=Counter)
    connections_killed: int = 0
    connection_kill_rounds: int = 0
    malformed_injected: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    load_seconds: float = 0.0
    faults_after_load_seconds: float = 0.0  # the remaining kinds, injected after the load
    settle_seconds: float = 0.0  # from the last fault to no order pending, queues empty
    cache_compared: int = 0
    cache_mismatches: list[str] = field(default_factory=list)
    cache_seconds: float = 0.0
    checks: dict[str, list[str]] = field(default_factory=dict)
    command: str = ""
    database: str = "mariadb"

    @property
    def violations(self) -> list[str]:
        return _flatten(self.checks)

    def render(self) -> str:
        names = POSTGRESQL_FAULT_NAMES if self.database == "postgresql" else FAULT_NAMES
        database = DATABASE_NAMES.get(self.database, self.database)
        faults = ", ".join(
            f"{names.get(kind, kind)} x{n}"
            + (f" ({self.malformed_injected} messages)" if kind == "malformed" else "")
            for kind, n in self.faults.items()
        )
        lines = [
            f"== chaos: servers ({database}, RabbitMQ, Redis) ==",
            f"orders sent {self.sent}, accepted (201) {self.accepted}, "
            f"rejected {dict(self.rejected) or 'none'}",
            f"settled: {self.confirmed} confirmed + {self.failed} failed + {self.cancelled} "
            f"cancelled, {self.pending} pending",
            self.cancels.render(),
            f"load {self.load_seconds:.1f}s; faults went on {self.faults_after_load_seconds:.1f}s "
            f"after it; time to settle after the last fault: {self.settle_seconds:.1f}s",
            f"faults injected: {faults or 'none'}",
            f"kills (kill -9): {self.faults.get('kill', 0)}; {database} connections killed: "
            f"{self.connections_killed} in {self.connection_kill_rounds} rounds",
            f"cache: {self.cache_compared} products compared with the database, "
            f"{len(self.cache_mismatches)} mismatches "
            f"(checked for {self.cache_seconds:.1f}s after the queues emptied)",
            f"dead-letter queues: {self.dead_letters}",
            *_render_checks(self.checks),
            f"reproduce: {self.command}",
        ]
        return "\n".join(lines)


class Faults:
    """Injects one fault at a time and always undoes it."""

    def __init__(
        self, stack: Stack, config: ChaosConfig, rng: random.Random, report: ChaosReport
    ) -> None:
        self.stack, self.config, self.rng, self.report = stack, config, rng, report
        # The background connection killer's own draws: the rotation's stay as they were.
        self.killer_rng = random.Random(rng.random())

    async def inject(self, kind: str) -> None:
        self.report.faults[kind] += 1
        await getattr(self, f"_{kind}")()

    async def _kill(self) -> None:
        victim = self.rng.choice([*self.stack.products, *self.stack.orders])
        victim.kill()
        await asyncio.sleep(self.rng.uniform(0.5, 1.5))
        victim.start()

    @property
    def postgresql(self) -> bool:
        return self.config.database == "postgresql"

    async def _connections(self) -> None:
        """Kill every connection the services hold to the sandbox's database, a few rounds
        in a row: pooled, in a transaction, or waiting for a lock, as a failover or a DBA's
        KILL (PostgreSQL: pg_terminate_backend) does. Nothing to restore: the services must
        reconnect by themselves."""
        for round_ in range(self.config.connection_kill_rounds):
            if round_:
                await asyncio.sleep(self.rng.uniform(0.3, 0.8))
            await self.kill_connections()

    async def kill_connections(self) -> int:
        """One round: ``KILL CONNECTION`` of each connection to the sandbox's database
        (from ``information_schema.processlist``, this one excepted; on PostgreSQL
        ``pg_terminate_backend``); how many died."""
        if self.postgresql:
            killed = await self._terminate_backends()
            self.report.connection_kill_rounds += 1
            self.report.connections_killed += killed
            return killed
        conn = await asyncmy.connect(
            host=servers.MYSQL_HOST,
            port=servers.MYSQL_PORT,
            user=servers.MYSQL_USER,
            password=servers.MYSQL_PASSWORD,
            connect_timeout=5,
        )
        killed = 0
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = %s AND id <> CONNECTION_ID()",
                    (self.stack.sandbox.name,),
                )
                for (thread_id,) in await cursor.fetchall():
                    try:
                        await cursor.execute(f"KILL CONNECTION {int(thread_id)}")
                        killed += 1
                    except asyncmy.errors.OperationalError:
                        pass  # it ended between the listing and the kill
        finally:
            conn.close()
        self.report.connection_kill_rounds += 1
        self.report.connections_killed += killed
        return killed

    async def _terminate_backends(self) -> int:
        """``pg_terminate_backend`` of each client session on the sandbox's database (from
        ``pg_stat_activity``; this one, on the maintenance database, and the harness's own
        stall excepted); how many were terminated."""
        conn = await asyncpg.connect(
            host=servers.PG_HOST,
            port=servers.PG_PORT,
            user=servers.PG_USER,
            password=servers.PG_PASSWORD or None,
            database="postgres",
            timeout=5,
        )
        try:
            terminated = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' AND application_name <> $2",
                self.stack.sandbox.name,
                HARNESS_APPLICATION_NAME,
                timeout=5,
            )
        finally:
            await conn.close()
        # False: it ended between the listing and the signal.
        return sum(1 for (done,) in terminated if done)

    async def kill_connections_while(self, load: asyncio.Task[LoadResult]) -> None:
        """Besides its turn among the faults: a round of connection kills every
        ``connection_kill_every`` seconds (jittered) for as long as the load runs."""
        every = self.config.connection_kill_every
        while every > 0 and not load.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(load), self.killer_rng.uniform(0.5 * every, 1.5 * every)
                )
            if not load.done():
                with contextlib.suppress(
                    OSError, asyncmy.errors.Error, asyncpg.PostgresError, asyncpg.InterfaceError
                ):
                    await self.kill_connections()  # e.g. during a stall: the next round

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
        if self.postgresql:
            await self._lock_tables()
            return
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
            conn.close()  # also releases the lock if the sleep was cut short

    async def _lock_tables(self) -> None:
        """PostgreSQL's stall: the services' busiest tables locked against every read and
        write, in one transaction on the sandbox's database, then rolled back."""
        conn = await asyncpg.connect(
            host=servers.PG_HOST,
            port=servers.PG_PORT,
            user=servers.PG_USER,
            password=servers.PG_PASSWORD or None,
            database=self.stack.sandbox.name,
            timeout=5,
            server_settings={"application_name": HARNESS_APPLICATION_NAME},
        )
        try:
            transaction = conn.transaction()
            await transaction.start()
            # Every statement on either table waits while this lock is held: a stall.
            await conn.execute(
                f"LOCK TABLE {products_table.name}, {orders_table.name} IN ACCESS EXCLUSIVE MODE"
            )
            await asyncio.sleep(min(self.config.outage_seconds, 2.0))
            await transaction.rollback()
        finally:
            await conn.close()  # also ends the transaction if the sleep was cut short

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


async def _create_product(client: httpx.AsyncClient, product_url: str, name: str, qty: int) -> int:
    response = await client.post(
        f"{product_url}/products", json={"name": name, "price": 10, "qty": qty}
    )
    response.raise_for_status()
    product_id: int = response.json()["id"]
    return product_id


async def _change_catalogue(
    stack: Stack, deleted: int, restocked: int, delay: float, timeout: float = 30.0
) -> list[str]:
    """Mid-run, while faults go on: delete one product (its cache entry must become a
    tombstone) and restock another through the ledger. Tried on every product replica in
    turn until done; returns what could not be done."""
    await asyncio.sleep(delay)
    steps: dict[str, tuple[str, str, dict[str, object] | None, set[int]]] = {
        "delete": ("DELETE", f"/products/{deleted}", None, {204, 404}),
        "restock": (
            "POST",
            f"/products/{restocked}/stock-adjustments",
            {"delta": 3, "reason": "chaos restock"},
            {201},
        ),
    }
    problems: list[str] = []
    async with httpx.AsyncClient(timeout=5) as client:
        for name, (method, path, body, ok) in steps.items():
            deadline, attempt, done = time.monotonic() + timeout, 0, False
            while not done and time.monotonic() < deadline:
                url = stack.products[attempt % len(stack.products)].url
                attempt += 1
                try:
                    response = await client.request(method, url + path, json=body)
                    # A 404 on a retried delete: an earlier attempt did it, its answer lost.
                    done = response.status_code in ok and not (
                        response.status_code == 404 and attempt == 1
                    )
                except httpx.HTTPError:
                    pass
                if not done:
                    await asyncio.sleep(0.5)
            if not done:
                problems.append(f"{name} of a product not done within {timeout:.0f}s")
    return problems


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    database_host = servers.PG_HOST if config.database == "postgresql" else servers.MYSQL_HOST
    _require_loopback(database_host, servers.REDIS_HOST, servers.AMQP_HOST)
    rng = random.Random(config.seed)
    report = ChaosReport(command=config.command(), database=config.database)
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="orderstack-chaos-"))
    sandbox = await asyncio.to_thread(Sandbox("chaos", database=config.database).create)
    service_env = {"CACHE_REPAIR_INTERVAL_SECONDS": f"{config.cache_repair_interval:g}"}
    if config.pending_resend_seconds is not None:
        service_env["ORDER_PENDING_RESEND_SECONDS"] = f"{config.pending_resend_seconds:g}"
    stack = Stack(
        sandbox,
        log_dir,
        config.product_replicas,
        config.order_replicas,
        extra_env=service_env,
    )
    try:
        stack.start()
        demand = config.orders * (1 + config.max_quantity) / 2  # units
        total_stock = int(demand * config.stock_ratio)
        initial: dict[int, int] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(config.products):
                qty = total_stock // config.products + (
                    1 if i < total_stock % config.products else 0
                )
                initial[await _create_product(client, stack.product_url, f"chaos-{i}", qty)] = qty
            # Two products no order asks for: one is deleted mid-run, one restocked.
            deleted = await _create_product(client, stack.product_url, "chaos-deleted", 10)
            restocked = await _create_product(client, stack.product_url, "chaos-restocked", 10)
        faults = Faults(stack, config, rng, report)
        order_urls = [p.url for p in stack.orders]
        canceller = Canceller(order_urls, config.cancel_fraction, random.Random(rng.random()))
        catalogue = asyncio.create_task(
            _change_catalogue(stack, deleted, restocked, config.orders / config.rate / 2)
        )
        load = asyncio.create_task(
            drive_orders(
                order_urls,
                list(initial),
                count=config.orders,
                rate=config.rate,
                rng=rng,
                progress=_progress(config.orders),
                max_quantity=config.max_quantity,
                on_accepted=canceller.submit,
            )
        )
        killer = asyncio.create_task(
            faults.kill_connections_while(load)
            if "connections" in config.faults
            else asyncio.sleep(0)
        )
        load_started = time.monotonic()
        load.add_done_callback(
            lambda _: setattr(report, "load_seconds", time.monotonic() - load_started)
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
        report.faults_after_load_seconds = time.monotonic() - load_started - report.load_seconds
        await killer
        catalogue_problems = await catalogue
        report.cancels = await canceller.finish()
        print()
        accepted = result.accepted
        report.sent, report.rejected = result.sent, result.rejected
        for process in [*stack.products, *stack.orders]:
            if not process.alive():
                process.start()
        state, report.settle_seconds = await wait_settled(
            sandbox.database_url, sandbox.amqp_url, config.settle_timeout
        )
        # The queues are empty: the cache must now converge within about two repair passes.
        (
            report.cache_compared,
            report.cache_mismatches,
            report.cache_seconds,
        ) = await wait_cache_consistent(
            sandbox.database_url, sandbox.redis_url, 2 * config.cache_repair_interval + 1
        )
        report.accepted = len(accepted)
        report.confirmed = state.by_status.get("confirmed", 0)
        report.failed = state.by_status.get("failed", 0)
        report.cancelled = state.by_status.get("cancelled", 0)
        report.pending = state.pending
        report.dead_letters = {k: v for k, v in state.queue_depths.items() if k.endswith(".dlq")}
        settled, oversell = _classify_stock(
            await stock_violations(sandbox.database_url, initial, accepted)
        )
        if state.pending:
            settled.append(f"{state.pending} orders still pending")
        work_left = {k: v for k, v in state.queue_depths.items() if not k.endswith(".dlq") and v}
        expected_dlq = {PRODUCT_SERVICE_QUEUE.dead_letter_queue: report.malformed_injected}
        unexpected = {k: v for k, v in report.dead_letters.items() if v != expected_dlq.get(k, 0)}
        report.checks = {
            SETTLED: settled,
            NO_OVERSELL: oversell,
            LEDGER: await ledger_violations(sandbox.database_url),
            OUTBOXES: (
                [f"{state.unsent_events} events stuck in the outboxes"]
                if state.unsent_events
                else []
            ),
            QUEUES: [f"messages left unprocessed: {work_left}"] if work_left else [],
            DEAD_LETTERS: (
                [f"dead-letter queues hold {unexpected}, expected {expected_dlq}"]
                if unexpected
                else []
            ),
            CANCELS: report.cancels.problems
            + await cancel_violations(
                sandbox.database_url,
                accepted,
                report.cancels.cancelled,
                report.cancels.refused,
            ),
            CACHE: report.cache_mismatches,
            CATALOGUE: catalogue_problems,
        }
        return report
    finally:
        stack.stop()
        await asyncio.to_thread(sandbox.drop)
        print(f"service logs: {log_dir}")


# --- the embedded default ---------------------------------------------------------------

# What would point `orderstack dev` at servers, or elsewhere than its working directory.
_SERVER_VARIABLES = (
    "DATABASE_URL",
    "DB_HOST",
    "RABBITMQ_URL",
    "REDIS_URL",
    "REDIS_HOST",
    "PRODUCT_SERVICE_URL",
    "LOCAL_BUS_PATH",
    "ADMIN_TOKEN",
    "PORT",
    "ORDER_PENDING_RESEND_SECONDS",
)
SHUTDOWN_BOUND = 15.0  # seconds a SIGINT may take to drain and exit


@dataclass
class EmbeddedChaosConfig:
    kills: int = 6  # stops, alternating SIGINT and kill -9 (SIGINT first)
    rate: float = 80.0  # orders per second, open loop, also while the process is down
    kill_interval: tuple[float, float] = (2.0, 4.0)  # seconds of load between stops
    products: int = 3
    stock_ratio: float = 0.5  # total stock / expected demand (in units)
    max_quantity: int = 5  # each order asks for 1 to this many units
    cancel_fraction: float = 0.15  # share of the accepted orders their clients cancel
    settle_timeout: float = 60.0
    seed: int = 7
    log_dir: Path | None = None
    workdir: Path | None = None  # where `orderstack dev` keeps its files (default: a temp dir)

    def command(self) -> str:
        low, high = self.kill_interval
        return (
            f'make chaos ARGS="--embedded --kills {self.kills} --rate {self.rate:g} '
            f"--kill-interval {low:g},{high:g} --products {self.products} "
            f"--stock-ratio {self.stock_ratio:g} --max-quantity {self.max_quantity} "
            f'--cancel-fraction {self.cancel_fraction:g} --seed {self.seed}"'
        )


@dataclass
class Stop:
    signal: str
    after_load_seconds: float  # since the process last came up
    exit_code: int | None
    exit_seconds: float  # from the signal to the process's exit
    back_seconds: float  # from the signal to answering again


@dataclass
class EmbeddedChaosReport:
    workdir: str = ""
    sent: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    stored: int = 0  # orders in the database, also those whose 201 the client never read
    confirmed: int = 0
    failed: int = 0
    cancelled: int = 0
    pending: int = 0
    cancels: CancelResult = field(default_factory=CancelResult)
    stops: list[Stop] = field(default_factory=list)
    settle_seconds: float = 0.0
    checks: dict[str, list[str]] = field(default_factory=dict)
    command: str = ""

    @property
    def violations(self) -> list[str]:
        return _flatten(self.checks)

    @property
    def kills(self) -> Counter[str]:
        return Counter(stop.signal for stop in self.stops)

    def render(self) -> str:
        lines = [
            "== chaos: embedded default (orderstack dev: SQLite + durable local bus) ==",
            f"working directory: {self.workdir} (ORDER_PENDING_RESEND_SECONDS=3600: no resends)",
            f"stops: {len(self.stops)} ({', '.join(f'{n} {s}' for s, n in self.kills.items())}),"
            " each restarted on the same files",
            *(
                f"  {i}. {stop.signal:<7} after {stop.after_load_seconds:.1f}s of load: exited "
                f"({stop.exit_code}) in {stop.exit_seconds:.2f}s, answering again "
                f"{stop.back_seconds:.1f}s after the signal"
                for i, stop in enumerate(self.stops, 1)
            ),
            f"orders sent {self.sent}, accepted (201) {self.accepted}, "
            f"rejected {dict(self.rejected) or 'none'}",
            f"stored {self.stored}: {self.confirmed} confirmed + {self.failed} failed + "
            f"{self.cancelled} cancelled, {self.pending} pending; time to settle after the "
            f"load stopped: {self.settle_seconds:.1f}s",
            self.cancels.render(),
            *_render_checks(self.checks),
            f"reproduce: {self.command}",
        ]
        return "\n".join(lines)


class _SteadyLoad:
    """Open-loop orders at ``rate`` until stopped, whatever state the process is in: a
    one-second drive_orders is started every second, so a chunk stuck on a dying process
    does not hold the next one back."""

    def __init__(
        self,
        order_url: str,
        product_ids: list[int],
        rate: float,
        rng: random.Random,
        max_quantity: int,
        canceller: Canceller,
    ) -> None:
        self.order_url, self.product_ids, self.rate, self.rng = order_url, product_ids, rate, rng
        self.max_quantity, self.canceller = max_quantity, canceller
        self._stop = asyncio.Event()
        self._task: asyncio.Task[LoadResult] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> LoadResult:
        assert self._task is not None
        self._stop.set()
        return await self._task

    async def _run(self) -> LoadResult:
        chunks: list[asyncio.Task[LoadResult]] = []
        while not self._stop.is_set():
            chunks.append(
                asyncio.create_task(
                    drive_orders(
                        [self.order_url],
                        self.product_ids,
                        count=max(1, round(self.rate)),
                        rate=self.rate,
                        rng=self.rng,
                        connections=64,
                        timeout=5.0,
                        max_quantity=self.max_quantity,
                        on_accepted=self.canceller.submit,
                    )
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
        total = LoadResult()
        for chunk in await asyncio.gather(*chunks):
            total.accepted += chunk.accepted
            total.rejected.update(chunk.rejected)
            total.sent += chunk.sent
        return total


def _dev(workdir: Path, log_dir: Path, order_port: int, product_port: int) -> ServiceProcess:
    env = {
        "ORDER_PORT": str(order_port),
        "PRODUCT_PORT": str(product_port),
        # The sweeper would heal a lost message after this long: out of the way, so the
        # check proves that nothing was lost in the first place.
        "ORDER_PENDING_RESEND_SECONDS": "3600",
    }
    return ServiceProcess(
        "dev",
        ["dev"],
        env,
        log_dir,
        port=order_port,
        cwd=workdir,
        unset_env=_SERVER_VARIABLES,
    )


async def _stop(dev: ServiceProcess, sig: signal.Signals) -> tuple[int | None, float]:
    """Send ``sig``, wait for the exit (kill -9 past SHUTDOWN_BOUND); (exit code or None
    when it had to be killed, seconds)."""
    assert dev.process is not None
    process = dev.process
    started = time.monotonic()
    process.send_signal(sig)
    try:
        await asyncio.to_thread(process.wait, SHUTDOWN_BOUND)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait, 5)
        return None, time.monotonic() - started
    return process.returncode, time.monotonic() - started


async def run_embedded_chaos(config: EmbeddedChaosConfig) -> EmbeddedChaosReport:
    rng = random.Random(config.seed)
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="orderstack-chaos-dev-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_dir = config.log_dir or workdir
    database_url = f"sqlite:///{workdir / 'var' / 'orderstack.db'}"  # the default's file
    report = EmbeddedChaosReport(workdir=str(workdir), command=config.command())
    order_port, product_port = free_port(), free_port()
    order_url, product_url = f"http://127.0.0.1:{order_port}", f"http://127.0.0.1:{product_port}"
    dev = _dev(workdir, log_dir, order_port, product_port).start()
    clean_stop: list[str] = []
    try:
        await asyncio.to_thread(dev.wait_healthy, 30.0, "/livez")
        low, high = config.kill_interval
        expected_orders = config.rate * (config.kills + 1) * (low + high) / 2
        demand = expected_orders * (1 + config.max_quantity) / 2  # units
        total_stock = max(config.products, int(demand * config.stock_ratio))
        initial: dict[int, int] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(config.products):
                qty = total_stock // config.products + (
                    1 if i < total_stock % config.products else 0
                )
                initial[await _create_product(client, product_url, f"dev-chaos-{i}", qty)] = qty
        canceller = Canceller([order_url], config.cancel_fraction, random.Random(rng.random()))
        load = _SteadyLoad(
            order_url, list(initial), config.rate, rng, config.max_quantity, canceller
        )
        load.start()
        for i in range(config.kills):
            up_for = rng.uniform(low, high)
            await asyncio.sleep(up_for)  # orders flowing
            sig = signal.SIGINT if i % 2 == 0 else signal.SIGKILL
            started = time.monotonic()
            code, exit_seconds = await _stop(dev, sig)
            if sig == signal.SIGINT and (code is None or code not in (0, -signal.SIGINT, 130)):
                clean_stop.append(
                    f"stop {i + 1}: "
                    + (
                        f"still running {SHUTDOWN_BOUND:.0f}s after SIGINT (killed)"
                        if code is None
                        else f"exit code {code} after SIGINT"
                    )
                )
            print(f"  stop {i + 1}/{config.kills}: {sig.name}, exit {code} in {exit_seconds:.2f}s")
            dev = _dev(workdir, log_dir, order_port, product_port).start()  # same files
            await asyncio.to_thread(dev.wait_healthy, 30.0, "/livez")
            report.stops.append(
                Stop(
                    "SIGINT" if sig == signal.SIGINT else "kill -9",
                    up_for,
                    code,
                    exit_seconds,
                    time.monotonic() - started,
                )
            )
        await asyncio.sleep(rng.uniform(low, high))  # orders on the last restart too
        result = await load.stop()
        report.cancels = await canceller.finish()
        report.sent, report.accepted, report.rejected = (
            result.sent,
            len(result.accepted),
            result.rejected,
        )
        started = time.monotonic()
        state = await settlement(database_url, None)
        while (state.pending or state.unsent_events) and (
            time.monotonic() - started < config.settle_timeout
        ):
            await asyncio.sleep(0.25)
            state = await settlement(database_url, None)
        report.settle_seconds = time.monotonic() - started
        # A clean stop last, then the checks on the files alone.
        code, _ = await _stop(dev, signal.SIGINT)
        if code is None:
            clean_stop.append(f"final stop: still running {SHUTDOWN_BOUND:.0f}s after SIGINT")
        state = await settlement(database_url, None)
        report.stored = sum(state.by_status.values())
        report.confirmed = state.by_status.get("confirmed", 0)
        report.failed = state.by_status.get("failed", 0)
        report.cancelled = state.by_status.get("cancelled", 0)
        report.pending = state.pending
        settled, oversell = _classify_stock(
            await stock_violations(database_url, initial, result.accepted)
        )
        if state.pending:
            settled.append(
                f"{state.pending} stored orders still pending {config.settle_timeout:.0f}s "
                "after the load stopped (the sweeper is off: their messages were lost)"
            )
        report.checks = {
            SETTLED: settled,
            NO_OVERSELL: oversell,
            LEDGER: await ledger_violations(database_url),
            OUTBOXES: (
                [f"{state.unsent_events} events stuck in the outboxes"]
                if state.unsent_events
                else []
            ),
            CANCELS: report.cancels.problems
            + await cancel_violations(
                database_url, result.accepted, report.cancels.cancelled, report.cancels.refused
            ),
            CLEAN_STOP: clean_stop,
        }
        return report
    finally:
        dev.kill()
        print(f"service log: {dev.log_path}")


# --- command line -----------------------------------------------------------------------


def _interval(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    bounds = (float(low), float(high or low))
    if not 0 < bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError("expected LOW,HIGH seconds with 0 < LOW <= HIGH")
    return bounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="orderstack-chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults, dev_defaults = ChaosConfig(), EmbeddedChaosConfig()
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="the embedded default (orderstack dev) stopped by SIGINT and kill -9 under load",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="3 RabbitMQ nodes and HAProxy; broker nodes killed among the other faults",
    )
    parser.add_argument("--rate", type=float, help="orders per second (servers: 150, dev: 80)")
    parser.add_argument("--products", type=int, help="products ordered (servers: 5, dev: 3)")
    parser.add_argument("--stock-ratio", type=float, help="total stock / demand")
    parser.add_argument(
        "--max-quantity", type=int, help="orders ask for 1 to this many units (default 5)"
    )
    parser.add_argument(
        "--cancel-fraction",
        type=float,
        help="share of accepted orders cancelled by their clients (default 0.15)",
    )
    parser.add_argument("--settle-timeout", type=float, help="seconds")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    servers_group = parser.add_argument_group("servers (the default scenario)")
    servers_group.add_argument("--product-replicas", type=int, default=defaults.product_replicas)
    servers_group.add_argument("--order-replicas", type=int, default=defaults.order_replicas)
    servers_group.add_argument("--orders", type=int, default=defaults.orders)
    servers_group.add_argument("--fault-interval", type=float, default=defaults.fault_interval)
    servers_group.add_argument(
        "--connection-kill-every",
        type=float,
        default=defaults.connection_kill_every,
        help="seconds between rounds of connection kills during the load (0: only its turn)",
    )
    servers_group.add_argument(
        "--database",
        choices=("mariadb", "postgresql"),
        default=defaults.database,
        help="the server of the sandbox's database (default mariadb)",
    )
    servers_group.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated, from {','.join(FAULTS)}"
    )
    servers_group.add_argument(
        "--cache-repair-interval",
        type=float,
        default=defaults.cache_repair_interval,
        help="CACHE_REPAIR_INTERVAL_SECONDS of the services; the cache check waits ~2 of them",
    )
    servers_group.add_argument(
        "--pending-resend-seconds",
        type=float,
        help="ORDER_PENDING_RESEND_SECONDS of the order services (default: theirs, 30)",
    )
    dev_group = parser.add_argument_group("--embedded")
    dev_group.add_argument(
        "--kills", type=int, default=dev_defaults.kills, help="stops, SIGINT and kill -9 in turn"
    )
    dev_group.add_argument(
        "--kill-interval",
        type=_interval,
        default=dev_defaults.kill_interval,
        help="LOW,HIGH seconds of load between stops",
    )
    cluster_group = parser.add_argument_group("--cluster")
    cluster_group.add_argument("--duration", type=float, help="seconds of load (default 90)")
    cluster_group.add_argument(
        "--node-kills", type=int, help="at least this many broker-node kills (default 3)"
    )
    args = parser.parse_args(argv)
    if args.database != defaults.database and (args.cluster or args.embedded):
        parser.error("--database is for the servers scenario (not --cluster or --embedded)")
    if args.cluster:
        return _run_cluster(args, parser)
    started = time.monotonic()
    report: ChaosReport | EmbeddedChaosReport
    if args.embedded:
        dev_config = EmbeddedChaosConfig(
            kills=args.kills,
            rate=args.rate or dev_defaults.rate,
            kill_interval=args.kill_interval,
            products=args.products or dev_defaults.products,
            stock_ratio=args.stock_ratio or dev_defaults.stock_ratio,
            max_quantity=args.max_quantity or dev_defaults.max_quantity,
            cancel_fraction=(
                dev_defaults.cancel_fraction
                if args.cancel_fraction is None
                else args.cancel_fraction
            ),
            settle_timeout=args.settle_timeout or dev_defaults.settle_timeout,
            seed=args.seed,
        )
        report = asyncio.run(run_embedded_chaos(dev_config))
    else:
        faults = tuple(f for f in args.faults.split(",") if f)
        unknown = set(faults) - set(FAULTS)
        if unknown:
            parser.error(f"unknown faults: {sorted(unknown)}")
        config = ChaosConfig(
            product_replicas=args.product_replicas,
            order_replicas=args.order_replicas,
            orders=args.orders,
            rate=args.rate or defaults.rate,
            products=args.products or defaults.products,
            stock_ratio=args.stock_ratio or defaults.stock_ratio,
            max_quantity=args.max_quantity or defaults.max_quantity,
            cancel_fraction=(
                defaults.cancel_fraction if args.cancel_fraction is None else args.cancel_fraction
            ),
            fault_interval=args.fault_interval,
            connection_kill_every=args.connection_kill_every,
            faults=faults,
            cache_repair_interval=args.cache_repair_interval,
            pending_resend_seconds=args.pending_resend_seconds,
            settle_timeout=args.settle_timeout or defaults.settle_timeout,
            seed=args.seed,
            database=args.database,
        )
        report = asyncio.run(run_chaos(config))
    print(report.render())
    print(
        f"total run time {time.monotonic() - started:.0f}s; also: "
        f"python -m harness.chaos {shlex.join(argv or sys.argv[1:])}"
    )
    return 1 if report.violations else 0


def _run_cluster(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from harness.cluster_chaos import CLUSTER_FAULTS, ClusterChaosConfig, run_cluster_chaos

    started = time.monotonic()
    defaults = ClusterChaosConfig()
    given = args.faults != ",".join(FAULTS)  # the servers' default: not asked for
    faults = tuple(f for f in args.faults.split(",") if f) if given else CLUSTER_FAULTS
    if unknown := set(faults) - set(CLUSTER_FAULTS):
        parser.error(f"unknown faults for --cluster: {sorted(unknown)}")
    config = ClusterChaosConfig(
        product_replicas=args.product_replicas,
        order_replicas=args.order_replicas,
        duration=args.duration or defaults.duration,
        rate=args.rate or defaults.rate,
        products=args.products or defaults.products,
        stock_ratio=args.stock_ratio or defaults.stock_ratio,
        faults=faults,
        node_kills=defaults.node_kills if args.node_kills is None else args.node_kills,
        settle_timeout=args.settle_timeout or defaults.settle_timeout,
        max_quantity=args.max_quantity or defaults.max_quantity,
        cancel_fraction=(
            defaults.cancel_fraction if args.cancel_fraction is None else args.cancel_fraction
        ),
        seed=args.seed,
    )
    report = asyncio.run(run_cluster_chaos(config))
    print(report.render())
    print(f"total run time {time.monotonic() - started:.0f}s")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""The servers scenario's faults (``make chaos``, and the cluster run's besides its broker
node losses): what each one does and undoes, the run's settings and report, and the
catalogue changes made while the load runs. A fault is counted only once seen to take
effect (``ChaosReport.faults``); one tried in vain is counted apart (``faults_missed``).
Every fault is undone in a ``finally``.

The run has a Redis of its own (harness/cache_restart.py's ``OwnRedis``, given to
``Faults``): the Redis pause and the cache restart target it, never the shared server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shlex
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

import aio_pika
import asyncmy
import asyncpg
import httpx
import orjson
import redis.asyncio as aioredis
import redis.exceptions

from harness import rabbit
from harness import sandbox as servers
from harness.cache_restart import OwnRedis
from harness.cancels import CancelResult
from harness.checks import (
    flatten,
    render_checks,
)
from harness.load import LoadResult
from harness.processes import ServiceProcess, stop_process
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.cache.port import EPOCH_HEADER, cache_key
from orderstack.messaging.topology import EXCHANGE
from orderstack.orders.repository import orders as orders_table
from orderstack.products.repository import products as products_table

FAULTS = (
    "kill",
    "connections",
    "rabbitmq",
    "redis",
    "database",
    "malformed",
    "cache_restart",
    "database_reset",
)
FAULT_NAMES = {
    "kill": "kill -9 of a replica",
    "connections": "KILL CONNECTION of the services' MariaDB connections",
    "rabbitmq": "RabbitMQ outage",
    "redis": "Redis pause",
    "database": "database stall (FLUSH TABLES WITH READ LOCK)",
    "malformed": "malformed messages",
    "cache_restart": "Redis restarted from an older snapshot",
    "database_reset": "database reset (a product service on a fresh MariaDB database, same Redis)",
}
# The same faults on PostgreSQL: its database faults are made its own way.
POSTGRESQL_FAULT_NAMES = {
    **FAULT_NAMES,
    "connections": "pg_terminate_backend of the services' PostgreSQL connections",
    "database": "database stall (LOCK TABLE products, orders IN ACCESS EXCLUSIVE MODE)",
    "database_reset": (
        "database reset (a product service on a fresh PostgreSQL database, same Redis)"
    ),
}
# The database reset's products: their ids collide with the run's (1, 2, 3), their names
# and price never do.
RESET_PRODUCTS = 3
RESET_PRICE = 99.5
# --isolated: the broker and database faults confined to the run's own vhost and database,
# so that other work on the machine's servers goes on (make test runs it beside other tests).
ISOLATED_FAULT_NAMES = {
    "rabbitmq": "RabbitMQ outage of the run's vhost (its user's permissions cleared, its "
    "connections closed)",
    "database": "database stall (LOCK TABLES products, orders WRITE)",
}
DATABASE_NAMES = {"mariadb": "MariaDB", "postgresql": "PostgreSQL"}
# The harness's own connections to the sandbox's PostgreSQL database (the stall's): the
# connection killer leaves them alone.
HARNESS_APPLICATION_NAME = "orderstack-chaos"


@dataclass
class ChaosConfig:
    product_replicas: int = 3
    order_replicas: int = 2
    orders: int = 3000
    rate: float = 150.0  # orders per second
    products: int = 5
    stock_ratio: float = 0.6  # total stock / demand (in units)
    max_quantity: int = 5  # each line asks for 1 to this many units
    max_lines: int = 5  # orders of items have 1 to this many lines (load.OrderMix.mixed)
    cancel_fraction: float = 0.15  # share of the accepted orders their clients cancel
    fault_interval: float = 4.0
    faults: tuple[str, ...] = FAULTS
    outage_seconds: float = 3.0
    connection_kill_rounds: int = 3  # KILL CONNECTION rounds per "connections" fault
    connection_kill_every: float = 5.0  # and one round this often during the load; 0: off
    cache_repair_interval: float = 5.0  # CACHE_REPAIR_INTERVAL_SECONDS of the services
    pending_resend_seconds: float | None = None  # ORDER_PENDING_RESEND_SECONDS; None: default
    # The share of orders placed as holds of hold_seconds, confirmed by their clients racing
    # the expiry (harness/confirms.py); 0: none, as before holds.
    hold_share: float = 0.0
    hold_seconds: int = 5
    settle_timeout: float = 120.0
    seed: int = 7
    log_dir: Path | None = None
    database: Literal["mariadb", "postgresql"] = "mariadb"  # where the sandbox's database is
    # The RabbitMQ outage and the MariaDB stall on the run's own vhost and tables only
    # (ISOLATED_FAULT_NAMES), not the whole broker (stop_app) and server (FLUSH TABLES WITH
    # READ LOCK): the other tests of a parallel run keep their broker and database.
    isolated: bool = False

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
            f"--max-lines {self.max_lines}",
            f"--cancel-fraction {self.cancel_fraction:g}",
            f"--fault-interval {self.fault_interval:g}",
            f"--connection-kill-every {self.connection_kill_every:g}",
            f"--faults {','.join(self.faults)}",
            f"--cache-repair-interval {self.cache_repair_interval:g}",
            f"--seed {self.seed}",
        ]
        if self.pending_resend_seconds is not None:
            args.append(f"--pending-resend-seconds {self.pending_resend_seconds:g}")
        if self.hold_share > 0:
            args.append(f"--hold-share {self.hold_share:g} --hold-seconds {self.hold_seconds}")
        if self.database != "mariadb":
            args.append(f"--database {self.database}")
        if self.isolated:
            args.append("--isolated")
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
    confirms: str = ""  # the holds and their confirms (ConfirmResult.render), if any
    faults: Counter[str] = field(default_factory=Counter)  # injected, seen to take effect
    # Tried but not seen to take effect (no connection to kill, a replica already gone...):
    # not counted in ``faults``.
    faults_missed: Counter[str] = field(default_factory=Counter)
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
    # The database reset: answers of the run's GET /products/{id} read during and after it
    # for the ids the other database also has (200s), and those that were its product.
    foreign_checked: int = 0
    foreign_answers: list[str] = field(default_factory=list)
    checks: dict[str, list[str]] = field(default_factory=dict)
    command: str = ""
    database: str = "mariadb"
    isolated: bool = False
    shapes: str = ""  # the orders sent and accepted by shape (LoadResult.render_shapes)
    stored: str = ""  # the stored orders by shape and status (invariants.order_figures)

    @property
    def violations(self) -> list[str]:
        return flatten(self.checks)

    def render(self) -> str:
        names = POSTGRESQL_FAULT_NAMES if self.database == "postgresql" else FAULT_NAMES
        if self.isolated:
            names = {**names, **ISOLATED_FAULT_NAMES, "database": names["database"]}
            if self.database != "postgresql":  # PostgreSQL's stall is its tables' already
                names["database"] = ISOLATED_FAULT_NAMES["database"]
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
            *([self.shapes] if self.shapes else []),
            *([self.stored] if self.stored else []),
            self.cancels.render(),
            *([self.confirms] if self.confirms else []),
            f"load {self.load_seconds:.1f}s; faults went on {self.faults_after_load_seconds:.1f}s "
            f"after it; time to settle after the last fault: {self.settle_seconds:.1f}s",
            f"faults injected: {faults or 'none'}",
            *(
                [f"faults tried but not seen to take effect: {dict(self.faults_missed)}"]
                if self.faults_missed
                else []
            ),
            f"kills (kill -9): {self.faults.get('kill', 0)}; {database} connections killed: "
            f"{self.connections_killed} in {self.connection_kill_rounds} rounds",
            f"cache: {self.cache_compared} products compared with the database, "
            f"{len(self.cache_mismatches)} mismatches "
            f"(checked for {self.cache_seconds:.1f}s after the queues emptied)",
            *(
                [
                    f"database reset: {self.foreign_checked} answers of GET /products/{{id}} "
                    f"checked, {len(self.foreign_answers)} were the other database's product"
                ]
                if self.foreign_checked or self.foreign_answers
                else []
            ),
            f"dead-letter queues: {self.dead_letters}",
            *render_checks(self.checks),
            f"reproduce: {self.command}",
        ]
        return "\n".join(lines)


class Faults:
    """Injects one fault at a time and always undoes it. ``cache``: the run's own Redis,
    the stack's REDIS_URL (the Redis pause and the cache restart target it; without it the
    pause targets the sandbox's server and there is no cache restart)."""

    def __init__(
        self,
        stack: Stack,
        config: ChaosConfig,
        rng: random.Random,
        report: ChaosReport,
        cache: OwnRedis | None = None,
    ) -> None:
        self.stack, self.config, self.rng, self.report = stack, config, rng, report
        self.cache = cache
        self.redis_url = cache.url if cache else stack.sandbox.redis_url
        # The background connection killer's own draws: the rotation's stay as they were.
        self.killer_rng = random.Random(rng.random())
        # The database resets' products, by id: (name, price) in the other database.
        self.foreign: dict[int, tuple[str, Decimal]] = {}
        self.resets = 0

    async def inject(self, kind: str) -> None:
        """Inject one fault of ``kind``; it is counted in ``report.faults`` only once seen
        to take effect (each ``_kind`` says so), else in ``report.faults_missed``."""
        took_effect: bool = await getattr(self, f"_{kind}")()
        (self.report.faults if took_effect else self.report.faults_missed)[kind] += 1

    async def _kill(self) -> bool:
        victim = self.rng.choice([*self.stack.products, *self.stack.orders])
        was_running = victim.alive()
        victim.kill()
        gone = was_running and not victim.alive()  # it was running, and the kill ended it
        await asyncio.sleep(self.rng.uniform(0.5, 1.5))
        victim.start()
        return gone

    @property
    def postgresql(self) -> bool:
        return self.config.database == "postgresql"

    async def _connections(self) -> bool:
        """Kill every connection the services hold to the sandbox's database, a few rounds
        in a row: pooled, in a transaction, or waiting for a lock, as a failover or a DBA's
        KILL (PostgreSQL: pg_terminate_backend) does. Nothing to restore: the services must
        reconnect by themselves."""
        killed = 0
        for round_ in range(self.config.connection_kill_rounds):
            if round_:
                await asyncio.sleep(self.rng.uniform(0.3, 0.8))
            killed += await self.kill_connections()
        return killed > 0  # some connection was there to be killed

    async def kill_connections(self) -> int:
        """One round: ``KILL CONNECTION`` of each connection to the sandbox's database
        (from ``information_schema.processlist``, this one excepted; on PostgreSQL
        ``pg_terminate_backend``); how many died."""
        if self.postgresql:
            killed = await self._terminate_backends()
            self.report.connection_kill_rounds += 1
            self.report.connections_killed += killed
            return killed
        killed = 0
        async with servers.mysql_admin() as conn, conn.cursor() as cursor:
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

    async def _rabbitmq(self) -> bool:
        """``rabbitmqctl stop_app``, the outage, ``start_app``; taken effect once the
        broker was seen refusing a connection, and back once it was seen accepting one.
        Isolated: the same on the run's vhost alone (``_vhost_outage``)."""
        if self.config.isolated:
            return await self._vhost_outage()
        try:
            await _run("rabbitmqctl", "-q", "stop_app")
            refused = not await _broker_answers(self.stack.sandbox.amqp_url)
            await asyncio.sleep(self.config.outage_seconds)
        finally:
            await _run("rabbitmqctl", "-q", "start_app")
            await _wait_broker(self.stack.sandbox.amqp_url, 60.0)
        return refused

    async def _vhost_outage(self) -> bool:
        """The broker gone for the run's vhost alone: its user's permissions cleared (a new
        connection is refused) and every connection open on it closed, for the outage;
        then the permissions given back. Taken effect once a connection was seen refused
        and back once one was seen accepted, as for the whole broker."""
        sandbox = self.stack.sandbox
        try:
            await asyncio.to_thread(rabbit.clear_permissions, sandbox.name, sandbox.amqp_user)
            await asyncio.to_thread(rabbit.close_connections, sandbox.name, "chaos: vhost outage")
            refused = not await _broker_answers(sandbox.amqp_url)
            await asyncio.sleep(self.config.outage_seconds)
        finally:
            await asyncio.to_thread(rabbit.set_permissions, sandbox.name, sandbox.amqp_user)
            await _wait_broker(sandbox.amqp_url, 60.0)
        return refused

    async def _redis(self) -> bool:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            # Every client blocks until the pause ends, as if the server hung.
            await client.execute_command(
                "CLIENT", "PAUSE", int(self.config.outage_seconds * 1000), "ALL"
            )
            await asyncio.sleep(self.config.outage_seconds)
        finally:
            await client.execute_command("CLIENT", "UNPAUSE")
            await client.aclose()
        return True  # the server answered OK to the pause

    async def _cache_restart(self) -> bool:
        """The run's Redis stopped without saving (``SHUTDOWN NOSAVE``) and started again
        from the snapshot taken earlier (at the start, or right after the previous restart):
        every entry and the marker go back in time. A snapshot is taken again once it is
        up, so the next restart goes back too. Taken effect once the server answers with
        another ``run_id``."""
        if self.cache is None:
            raise RuntimeError("cache_restart needs the run's own Redis (Faults(cache=...))")
        cache = self.cache
        before = await self._run_id()
        try:
            await asyncio.to_thread(cache.stop)
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))  # the services meet no server
        finally:
            await asyncio.to_thread(cache.start)  # loads the last SAVE's file
        after = await self._run_id()
        await asyncio.to_thread(cache.save)
        return before is not None and after is not None and after != before

    async def _run_id(self) -> str | None:
        """INFO server's ``run_id`` of the stack's Redis (a new one at each start)."""
        client = aioredis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            info = await client.info("server")
            return str(info["run_id"])
        except (OSError, redis.exceptions.RedisError):
            return None
        finally:
            await client.aclose()

    async def _database_reset(self) -> bool:
        """A fresh product database behind the same Redis: a product service on a new
        sandbox's database and vhost, the stack's REDIS_URL, creates ``RESET_PRODUCTS``
        products (ids colliding with the stack's) and reads them, caching them under
        ``product:{id}`` with its own epoch, for the outage window; then it is stopped and
        its sandbox dropped. Meanwhile and after, the stack's GET /products/{id} of those
        ids is checked never to answer the other database's product. Taken effect once
        Redis was seen holding an entry of the other database's epoch."""
        self.resets += 1
        other = await asyncio.to_thread(
            Sandbox(f"reset{self.resets}", database=self.config.database).create
        )
        service: ServiceProcess | None = None
        seen = False
        try:
            env = {
                **other.env,
                "REDIS_URL": self.redis_url,
                "CACHE_REPAIR_INTERVAL_SECONDS": f"{self.config.cache_repair_interval:g}",
            }
            service = ServiceProcess(
                f"product-reset-{self.resets}", ["serve", "product"], env, self.stack.log_dir
            )
            service.start()
            await asyncio.to_thread(service.wait_healthy)
            async with httpx.AsyncClient(timeout=5) as client:
                ids: list[int] = []
                for i in range(RESET_PRODUCTS):
                    name = f"reset-{self.resets}-{i}"
                    ids.append(await create_product(client, service.url, name, 7, RESET_PRICE))
                    self.foreign[ids[-1]] = (name, Decimal(str(RESET_PRICE)))
                deadline = time.monotonic() + self.config.outage_seconds
                while True:
                    epoch = ""
                    for product_id in ids:  # read through it: cached with its epoch
                        answer = await client.get(f"{service.url}/products/{product_id}")
                        answer.raise_for_status()
                        epoch = answer.headers.get(EPOCH_HEADER, epoch)
                    seen = seen or await self._entries_of(epoch, ids)
                    await self.ask_stack(client, ids)
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(0.1)
        finally:
            if service is not None:
                await asyncio.to_thread(stop_process, service.process)
            await asyncio.to_thread(other.drop)
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(3):  # and after it is gone
                await self.ask_stack(client, list(self.foreign))
                await asyncio.sleep(0.2)
        return seen

    async def _entries_of(self, epoch: str, ids: list[int]) -> bool:
        """Whether Redis holds a ``product:{id}`` of ``ids`` written with ``epoch`` (the
        raw JSON's ``epoch``)."""
        if not epoch:
            return False
        client = aioredis.Redis.from_url(self.redis_url, socket_timeout=5)
        try:
            raws = await client.mget([cache_key(i) for i in ids])
        except (OSError, redis.exceptions.RedisError):
            return False
        finally:
            await client.aclose()
        return any(raw is not None and orjson.loads(raw).get("epoch") == epoch for raw in raws)

    async def ask_stack(self, client: httpx.AsyncClient, ids: list[int]) -> None:
        """GET /products/{id} of ``ids`` on each of the stack's product replicas; an answer
        that is the other database's product (its name or price) is a violation."""
        for replica in self.stack.products:
            for product_id in ids:
                try:
                    answer = await client.get(f"{replica.url}/products/{product_id}")
                except httpx.HTTPError:
                    continue  # a replica killed or restarting: nothing answered
                if answer.status_code != 200:
                    continue
                self.report.foreign_checked += 1
                body = answer.json()
                name, price = self.foreign[product_id]
                if body.get("name") == name or Decimal(str(body.get("price"))) == price:
                    self.report.foreign_answers.append(
                        f"product {product_id}: {replica.name} answered the other database's "
                        f"product ({body.get('name')!r}, price {body.get('price')})"
                    )

    async def _database(self) -> bool:
        if self.postgresql:
            await self._lock_tables()
            return True
        if self.config.isolated:
            await self._lock_mariadb_tables()
            return True
        # Its close also releases the lock if the sleep is cut short.
        async with servers.mysql_admin() as conn, conn.cursor() as cursor:
            # Writes on the whole server wait while this lock is held: a stall.
            await cursor.execute("FLUSH TABLES WITH READ LOCK")
            await asyncio.sleep(min(self.config.outage_seconds, 2.0))
            await cursor.execute("UNLOCK TABLES")
        return True  # the server granted the lock

    async def _lock_mariadb_tables(self) -> None:
        """MariaDB's stall confined to the run's database: the services' busiest tables
        write-locked (every read and write of them waits) in a session on the sandbox's
        database, for at most 2 s, then unlocked."""
        db = self.stack.sandbox.name
        async with servers.mysql_admin() as conn, conn.cursor() as cursor:
            await cursor.execute(
                f"LOCK TABLES `{db}`.{products_table.name} WRITE, `{db}`.{orders_table.name} WRITE"
            )
            await asyncio.sleep(min(self.config.outage_seconds, 2.0))
            await cursor.execute("UNLOCK TABLES")  # also released by the session's end

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

    async def _malformed(self) -> bool:
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
        return True  # each publish confirmed by the broker


async def _run(*command: str) -> None:
    """Run ``command``; a non-zero exit (or no exit in 120 s) raises with what it printed."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 120)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{shlex.join(command)}: no exit within 120s") from None
    if process.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} exited {process.returncode}: {output.decode()[-500:]}"
        )


async def _broker_answers(amqp_url: str) -> bool:
    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError):
        return False
    await connection.close()
    return True


async def _wait_broker(amqp_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await _broker_answers(amqp_url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"RabbitMQ not accepting connections {timeout:g}s after start_app")
        await asyncio.sleep(0.2)


def progress(total: int) -> Callable[[LoadResult], None]:
    def show(result: LoadResult) -> None:
        print(
            f"\r  orders sent {result.sent}/{total}, accepted {len(result.accepted)}, "
            f"rejected {sum(result.rejected.values())}",
            end="",
            flush=True,
        )

    return show


async def create_product(
    client: httpx.AsyncClient,
    product_url: str,
    name: str,
    qty: int,
    price: float = 10,
) -> int:
    response = await client.post(
        f"{product_url}/products", json={"name": name, "price": price, "qty": qty}
    )
    response.raise_for_status()
    product_id: int = response.json()["id"]
    return product_id


async def change_catalogue(
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

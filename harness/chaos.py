"""`make chaos`: faults injected under a steady stream of orders, then every invariant of
SPEC.md checked from the databases, the broker and the cache. Two scenarios:

- servers (the default): replicas of both services as separate processes on MariaDB
  (or ``--database postgresql``), RabbitMQ and Redis; in turn kill -9 of a replica, the
  services' database connections killed (MariaDB: ``KILL CONNECTION``; PostgreSQL:
  ``pg_terminate_backend``), a RabbitMQ outage, a Redis pause, a database stall, malformed
  messages, the Redis restarted from an older snapshot, a product service of a fresh
  database on the same Redis (the run has a redis-server of its own for these). After the
  run every ``product:{id}`` in Redis is compared with its row.
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
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx

from harness import sandbox as servers
from harness.cache_restart import OwnRedis
from harness.cancels import Canceller, CancelResult
from harness.checks import (
    CLEAN_STOP,
    FOREIGN_PRODUCTS,
    flatten,
    invariant_checks,
    render_checks,
    require_loopback,
)
from harness.cluster_chaos import CLUSTER_FAULTS, ClusterChaosConfig, run_cluster_chaos
from harness.confirms import (
    CONFIRMS,
    Confirmer,
    confirm_violations,
    order_statuses,
    wait_holds_ended,
)
from harness.faults import (
    FAULTS,
    ChaosConfig,
    ChaosReport,
    Faults,
    change_catalogue,
    create_product,
    progress,
)
from harness.invariants import (
    order_figures,
    settlement,
    wait_cache_consistent,
    wait_settled,
)
from harness.load import LoadResult, OrderMix, catalog_price, drive_orders
from harness.processes import ServiceProcess, free_port
from harness.sandbox import Sandbox
from harness.stack import Stack


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    database_host = servers.PG_HOST if config.database == "postgresql" else servers.MYSQL_HOST
    require_loopback(database_host, servers.REDIS_HOST, servers.AMQP_HOST)
    rng = random.Random(config.seed)
    report = ChaosReport(
        command=config.command(), database=config.database, isolated=config.isolated
    )
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="orderstack-chaos-"))
    sandbox = await asyncio.to_thread(Sandbox("chaos", database=config.database).create)
    # A Redis of the run's own (never the shared one): paused and restarted by the faults.
    cache_dir = Path(tempfile.mkdtemp(prefix="orderstack-chaos-redis-"))
    cache = OwnRedis(free_port(), cache_dir)
    service_env = {
        "CACHE_REPAIR_INTERVAL_SECONDS": f"{config.cache_repair_interval:g}",
        "REDIS_URL": cache.url,
    }
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
        await asyncio.to_thread(cache.start)
        stack.start()
        # Orders of 1 to max_lines lines over the same products, and the seed's one line.
        demand = config.orders * _mixed_units(config.max_lines, config.max_quantity)
        total_stock = int(demand * config.stock_ratio)
        initial: dict[int, int] = {}
        prices: dict[int, Decimal] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(config.products):
                qty = total_stock // config.products + (
                    1 if i < total_stock % config.products else 0
                )
                product_id = await create_product(
                    client, stack.product_url, f"chaos-{i}", qty, float(catalog_price(i))
                )
                initial[product_id], prices[product_id] = qty, catalog_price(i)
            # Two products no order asks for: one is deleted mid-run, one restocked.
            deleted = await create_product(client, stack.product_url, "chaos-deleted", 10)
            restocked = await create_product(client, stack.product_url, "chaos-restocked", 10)
            for product_id in [*initial, deleted, restocked]:  # cached (besides the creates')
                (await client.get(f"{stack.product_url}/products/{product_id}")).raise_for_status()
        # The snapshot a cache restart goes back to: every product at its initial stock.
        await asyncio.to_thread(cache.save)
        faults = Faults(stack, config, rng, report, cache=cache)
        order_urls = [p.url for p in stack.orders]
        canceller = Canceller(order_urls, config.cancel_fraction, random.Random(rng.random()))
        catalogue = asyncio.create_task(
            change_catalogue(stack, deleted, restocked, config.orders / config.rate / 2)
        )
        # Its own generator: a run without holds draws what it always drew.
        confirmer = Confirmer(order_urls, random.Random(config.seed + 1))
        mix = OrderMix.mixed(
            prices,
            max_lines=config.max_lines,
            max_quantity=config.max_quantity,
            hold_share=config.hold_share,
            hold_seconds=config.hold_seconds,
        )
        load = asyncio.create_task(
            drive_orders(
                order_urls,
                mix,
                count=config.orders,
                rate=config.rate,
                rng=rng,
                progress=progress(config.orders),
                on_accepted=canceller.submit,
                on_held=confirmer.submit,
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
        confirms = await confirmer.finish()
        print()
        accepted = result.accepted
        report.sent, report.rejected = result.sent, result.rejected
        for process in [*stack.products, *stack.orders]:
            if not process.alive():
                process.start()
        if confirms.holds:  # every hold confirmed or expired before the checks at rest
            still_held = await wait_holds_ended(
                sandbox.database_url, config.hold_seconds + config.settle_timeout
            )
            if still_held:
                confirms.problems.append(f"{still_held} orders still reserved at rest")
        state, report.settle_seconds = await wait_settled(
            sandbox.database_url, sandbox.amqp_url, config.settle_timeout, sandbox.queue_counts
        )
        # The queues are empty: the cache must now converge within about two repair passes.
        (
            report.cache_compared,
            report.cache_mismatches,
            report.cache_seconds,
        ) = await wait_cache_consistent(
            sandbox.database_url, cache.url, 2 * config.cache_repair_interval + 1
        )
        if "database_reset" in config.faults:  # the other database's ids, once more at rest
            async with httpx.AsyncClient(timeout=5) as client:
                await faults.ask_stack(client, list(faults.foreign))
        report.accepted = len(accepted)
        report.confirmed = state.by_status.get("confirmed", 0)
        report.failed = state.by_status.get("failed", 0)
        report.cancelled = state.by_status.get("cancelled", 0)
        report.pending = state.pending
        report.dead_letters = {k: v for k, v in state.queue_depths.items() if k.endswith(".dlq")}
        report.shapes = result.render_shapes()
        report.stored = await order_figures(sandbox.database_url)
        report.checks = await invariant_checks(
            sandbox.database_url,
            initial,
            accepted,
            state,
            report.cancels,
            malformed_injected=report.malformed_injected,
            cache_mismatches=report.cache_mismatches,
            catalogue_problems=catalogue_problems,
            prices=prices,
            several_lines=mix.several_lines,
        )
        if confirms.holds:
            expired = state.by_status.get("expired", 0)
            report.confirms = f"{confirms.render()}; at rest {expired} orders expired"
            report.checks[CONFIRMS] = confirm_violations(
                confirms, await order_statuses(sandbox.database_url, result.accepted)
            )
        if "database_reset" in config.faults:
            report.checks[FOREIGN_PRODUCTS] = report.foreign_answers or (
                []
                if report.foreign_checked
                else ["nothing to check: no answer read for the other database's ids"]
            )
        return report
    finally:
        stack.stop()
        await asyncio.to_thread(sandbox.drop)
        await asyncio.to_thread(cache.stop)
        shutil.rmtree(cache_dir, ignore_errors=True)
        print(f"service logs: {log_dir}")


def _mixed_units(max_lines: int, max_quantity: int) -> float:
    """The units an order of the chaos runs' mix asks for on average (to size the stock)."""
    return OrderMix.mixed(
        {1: Decimal(1)}, max_lines=max_lines, max_quantity=max_quantity
    ).expected_units()


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
    "AUTH_MODE",
    "AUTH_SIGNING_KEY",
    "AUTH_JWKS_URL",
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
    max_quantity: int = 5  # each line asks for 1 to this many units
    max_lines: int = 5  # orders of items have 1 to this many lines (load.OrderMix.mixed)
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
            f"--max-lines {self.max_lines} "
            f'--cancel-fraction {self.cancel_fraction:g} --seed {self.seed}"'
        )


@dataclass
class Stop:
    signal: str
    after_load_seconds: float  # since the process last came up
    exit_code: int | None
    exit_seconds: float  # from the signal to the process's exit
    back_seconds: float  # from the signal to answering again
    # Observed, not drawn: the 201s the load got from this process between its coming up
    # and the signal, and how long before the signal the last of them came (orders were
    # flowing when it was stopped; inf when none came).
    accepted_while_up: int = 0
    last_accept_before_signal: float = float("inf")


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
    shapes: str = ""  # the orders sent and accepted by shape (LoadResult.render_shapes)
    stored_figures: str = ""  # the stored orders by shape and status (order_figures)

    @property
    def violations(self) -> list[str]:
        return flatten(self.checks)

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
                f"  {i}. {stop.signal:<7} after {stop.after_load_seconds:.1f}s of load "
                f"({stop.accepted_while_up} orders accepted, the last "
                f"{stop.last_accept_before_signal:.2f}s before the signal): exited "
                f"({stop.exit_code}) in {stop.exit_seconds:.2f}s, answering again "
                f"{stop.back_seconds:.1f}s after the signal"
                for i, stop in enumerate(self.stops, 1)
            ),
            f"orders sent {self.sent}, accepted (201) {self.accepted}, "
            f"rejected {dict(self.rejected) or 'none'}",
            f"stored {self.stored}: {self.confirmed} confirmed + {self.failed} failed + "
            f"{self.cancelled} cancelled, {self.pending} pending; time to settle after the "
            f"load stopped: {self.settle_seconds:.1f}s",
            *([self.shapes] if self.shapes else []),
            *([self.stored_figures] if self.stored_figures else []),
            self.cancels.render(),
            *render_checks(self.checks),
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
        mix: OrderMix,
        rate: float,
        rng: random.Random,
        canceller: Canceller,
    ) -> None:
        self.order_url, self.mix, self.rate, self.rng = order_url, mix, rate, rng
        self.canceller = canceller
        self.accepted_at: list[float] = []  # when each 201 came (time.monotonic())
        self._stop = asyncio.Event()
        self._task: asyncio.Task[LoadResult] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def _accepted(self, url: str, order_id: int, quantity: int) -> None:
        self.accepted_at.append(time.monotonic())
        self.canceller.submit(url, order_id, quantity)

    def accepted_between(self, since: float, until: float) -> tuple[int, float]:
        """(201s that came in [since, until], seconds from the last of them to ``until``)."""
        times = [t for t in self.accepted_at if since <= t <= until]
        return len(times), (until - max(times)) if times else float("inf")

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
                        self.mix,
                        count=max(1, round(self.rate)),
                        rate=self.rate,
                        rng=self.rng,
                        connections=64,
                        timeout=5.0,
                        on_accepted=self._accepted,
                    )
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
        total = LoadResult()
        for chunk in await asyncio.gather(*chunks):
            total.add(chunk)
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
        demand = expected_orders * _mixed_units(config.max_lines, config.max_quantity)
        total_stock = max(config.products, int(demand * config.stock_ratio))
        initial: dict[int, int] = {}
        prices: dict[int, Decimal] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(config.products):
                qty = total_stock // config.products + (
                    1 if i < total_stock % config.products else 0
                )
                product_id = await create_product(
                    client, product_url, f"dev-chaos-{i}", qty, float(catalog_price(i))
                )
                initial[product_id], prices[product_id] = qty, catalog_price(i)
        canceller = Canceller([order_url], config.cancel_fraction, random.Random(rng.random()))
        mix = OrderMix.mixed(prices, max_lines=config.max_lines, max_quantity=config.max_quantity)
        load = _SteadyLoad(order_url, mix, config.rate, rng, canceller)
        load.start()
        up_since = time.monotonic()
        for i in range(config.kills):
            up_for = rng.uniform(low, high)
            await asyncio.sleep(up_for)  # orders flowing
            sig = signal.SIGINT if i % 2 == 0 else signal.SIGKILL
            started = time.monotonic()
            accepted_while_up, last_accept = load.accepted_between(up_since, started)
            code, exit_seconds = await _stop(dev, sig)
            if sig == signal.SIGINT and code != 0:  # a clean stop exits 0, nothing else
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
            up_since = time.monotonic()
            report.stops.append(
                Stop(
                    "SIGINT" if sig == signal.SIGINT else "kill -9",
                    up_for,
                    code,
                    exit_seconds,
                    up_since - started,
                    accepted_while_up,
                    last_accept,
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
        elif code != 0:
            clean_stop.append(f"final stop: exit code {code} after SIGINT")
        state = await settlement(database_url, None)
        report.stored = sum(state.by_status.values())
        report.confirmed = state.by_status.get("confirmed", 0)
        report.failed = state.by_status.get("failed", 0)
        report.cancelled = state.by_status.get("cancelled", 0)
        report.pending = state.pending
        report.shapes = result.render_shapes()
        report.stored_figures = await order_figures(database_url)
        report.checks = await invariant_checks(
            database_url,
            initial,
            result.accepted,
            state,
            report.cancels,
            pending_note=(
                f" {config.settle_timeout:.0f}s after the load stopped (the sweeper is off: "
                "their messages were lost)"
            ),
            prices=prices,
            several_lines=mix.several_lines,
        )
        report.checks[CLEAN_STOP] = clean_stop
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
        "--max-quantity", type=int, help="each line asks for 1 to this many units (default 5)"
    )
    parser.add_argument(
        "--max-lines",
        type=int,
        help="orders written with items have 1 to this many lines, over the same products "
        "(default 5; 30 %% of the orders are the seed's one line, either spelling)",
    )
    parser.add_argument(
        "--cancel-fraction",
        type=float,
        help="share of accepted orders cancelled by their clients (default 0.15)",
    )
    parser.add_argument(
        "--hold-share",
        type=float,
        default=defaults.hold_share,
        help="share of orders placed as holds (hold_seconds), each confirmed by its client "
        "0.5 to 1.5 hold times after its 201, racing the expiry (servers; default 0: none)",
    )
    parser.add_argument(
        "--hold-seconds", type=int, default=defaults.hold_seconds, help="a hold's seconds (5)"
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
        "--isolated",
        action="store_true",
        help="the RabbitMQ outage on the run's vhost and the MariaDB stall on its tables "
        "only, not the whole broker and server: other work on them goes on",
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
    if args.isolated and (args.cluster or args.embedded):
        parser.error("--isolated is for the servers scenario (not --cluster or --embedded)")
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
            max_lines=args.max_lines or dev_defaults.max_lines,
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
            max_lines=args.max_lines or defaults.max_lines,
            cancel_fraction=(
                defaults.cancel_fraction if args.cancel_fraction is None else args.cancel_fraction
            ),
            hold_share=args.hold_share,
            hold_seconds=args.hold_seconds,
            fault_interval=args.fault_interval,
            connection_kill_every=args.connection_kill_every,
            faults=faults,
            cache_repair_interval=args.cache_repair_interval,
            pending_resend_seconds=args.pending_resend_seconds,
            settle_timeout=args.settle_timeout or defaults.settle_timeout,
            seed=args.seed,
            database=args.database,
            isolated=args.isolated,
        )
        report = asyncio.run(run_chaos(config))
    print(report.render())
    print(
        f"total run time {time.monotonic() - started:.0f}s; also: "
        f"python -m harness.chaos {shlex.join(argv or sys.argv[1:])}"
    )
    return 1 if report.violations else 0


def _run_cluster(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:

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
        max_lines=args.max_lines or defaults.max_lines,
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

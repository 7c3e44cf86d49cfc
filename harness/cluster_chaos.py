"""`make chaos ARGS="--cluster"`: the services scaled out, then broken.

A 3-node RabbitMQ cluster (harness/cluster.py, quorum queues, every service given the
three node URLs), replicas of both services behind HAProxy (harness/balancer.py, health
checks on /readyz), MariaDB and Redis. A steady open-loop stream of orders goes through the
balancer while faults are injected in turn, a broker node's kill -9 (and its return) every
other time: kill -9 of a service replica behind the balancer, KILL CONNECTION of the
services' database connections, a Redis pause, a database stall, malformed messages. Then
the same invariants as the servers scenario (nothing lost, oversold or doubled; cache =
database), and the throughput and latency before, during and after each node loss.

The machine's own RabbitMQ node is never touched; the cluster, the balancer, the replicas
and the sandbox are always stopped and dropped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import sqlalchemy as sa

from harness import rabbit
from harness import sandbox as servers
from harness.balancer import Balancer
from harness.cancels import Canceller
from harness.checks import flatten, invariant_checks, render_checks, require_loopback
from harness.cluster import ClusterError, RabbitCluster
from harness.faults import (
    ChaosConfig,
    ChaosReport,
    Faults,
    change_catalogue,
    create_product,
)
from harness.invariants import (
    harness_engine,
    order_figures,
    wait_cache_consistent,
    wait_settled,
)
from harness.load import LoadResult, OrderMix, catalog_price, drive_orders
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.orders.repository import orders

# "node" is a broker node's kill -9 and return; the others are the servers scenario's,
# less its RabbitMQ outage (which stops the machine's own node).
CLUSTER_FAULTS = ("node", "kill", "connections", "redis", "database", "malformed")
FAULT_NAMES = {
    "node": "kill -9 of a RabbitMQ node (and its return)",
    "kill": "kill -9 of a service replica behind the balancer",
    "connections": "KILL CONNECTION of the services' MariaDB connections",
    "redis": "Redis pause",
    "database": "database stall (FLUSH TABLES WITH READ LOCK)",
    "malformed": "malformed messages",
}
PHASES = ("before", "during", "after")


@dataclass
class ClusterSandbox(Sandbox):
    """A sandbox whose vhost lives on the cluster: the services get every node's URL."""

    cluster: RabbitCluster | None = None

    @property
    def amqp_url(self) -> str:
        assert self.cluster is not None
        return f"{self.cluster.urls[0]}{self.name}"

    @property
    def env(self) -> dict[str, str]:
        assert self.cluster is not None
        return {**super().env, "RABBITMQ_URL": self.cluster.vhost_urls(self.name)}

    def queue_backlog(self) -> dict[str, int]:
        return {name: sum(pair) for name, pair in self.queue_counts().items()}

    def queue_counts(self) -> dict[str, tuple[int, int]]:
        """The vhost's (ready, unacknowledged) per queue, as the cluster counts them
        (asked of the first node that answers)."""
        assert self.cluster is not None
        errors: list[str] = []
        for node in range(self.cluster.size):
            try:
                listing = self.cluster.ctl(node, *rabbit.LIST_QUEUE_TOTALS, "-p", self.name)
            except ClusterError as exc:
                errors.append(str(exc))
                continue
            return rabbit.parse_queue_counts(listing)
        raise ClusterError(f"no node listed the queues of {self.name}: {errors}")


@dataclass
class ClusterChaosConfig:
    product_replicas: int = 3
    order_replicas: int = 2
    duration: float = 90.0  # seconds of load
    rate: float = 100.0  # orders per second, open loop, through the balancer
    products: int = 5
    stock_ratio: float = 0.6
    fault_interval: float = 3.0
    faults: tuple[str, ...] = CLUSTER_FAULTS
    node_kills: int = 3  # at least this many broker-node kills, load or not
    node_down_seconds: float = 5.0
    outage_seconds: float = 2.0  # Redis pause, database stall
    cache_repair_interval: float = 2.0
    settle_timeout: float = 180.0
    window: float = 5.0  # seconds before and after a node loss that are compared with it
    max_quantity: int = 5  # each line asks for 1 to this many units
    max_lines: int = 5  # orders of items have 1 to this many lines (load.OrderMix.mixed)
    cancel_fraction: float = 0.15  # share of the accepted orders their clients cancel
    seed: int = 7
    log_dir: Path | None = None

    def command(self) -> str:
        return (
            f'make chaos ARGS="--cluster --product-replicas {self.product_replicas} '
            f"--order-replicas {self.order_replicas} --duration {self.duration:g} "
            f"--rate {self.rate:g} --node-kills {self.node_kills} "
            f"--max-quantity {self.max_quantity} --max-lines {self.max_lines} "
            f"--cancel-fraction {self.cancel_fraction:g} "
            f'--faults {",".join(self.faults)} --seed {self.seed}"'
        )


@dataclass
class NodeLoss:
    node: str
    killed: float  # wall clock (epoch seconds)
    back: float  # when the node answered again


@dataclass
class PhaseFigures:
    seconds: float = 0.0
    accepted: int = 0
    rejected: int = 0
    accept_latencies: list[float] = field(default_factory=list)
    settled: int = 0  # orders that settled in the phase
    settle_latencies: list[float] = field(default_factory=list)  # of orders created in it

    def render(self, name: str) -> str:
        if not self.seconds:
            return f"  {name:<7} (no time in this phase)"
        return (
            f"  {name:<7} {self.seconds:5.1f}s  accepted {self.accepted / self.seconds:6.1f}/s "
            f"(rejected {self.rejected}), accept p50 {_ms(self.accept_latencies, 0.5)} "
            f"p99 {_ms(self.accept_latencies, 0.99)}; "
            f"settled {self.settled / self.seconds:6.1f}/s, "
            f"create->settle p50 {_ms(self.settle_latencies, 0.5)} "
            f"p99 {_ms(self.settle_latencies, 0.99)}"
        )


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0] * 1000:.0f}ms"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"{cuts[round(q * 100) - 1] * 1000:.0f}ms"


@dataclass
class ClusterChaosReport:
    base: ChaosReport = field(default_factory=ChaosReport)
    cluster_start_seconds: float = 0.0
    losses: list[NodeLoss] = field(default_factory=list)
    phases: dict[str, PhaseFigures] = field(
        default_factory=lambda: {p: PhaseFigures() for p in PHASES}
    )
    overall: PhaseFigures = field(default_factory=PhaseFigures)
    losses_under_load: int = 0

    @property
    def checks(self) -> dict[str, list[str]]:
        return self.base.checks

    @property
    def violations(self) -> list[str]:
        return flatten(self.base.checks)

    window_note: str = ""

    def render(self) -> str:
        r = self.base
        faults = ", ".join(f"{FAULT_NAMES.get(k, k)} x{n}" for k, n in r.faults.items())
        lines = [
            "== chaos: cluster (3 RabbitMQ nodes, quorum queues, HAProxy, MariaDB, Redis) ==",
            f"cluster started in {self.cluster_start_seconds:.1f}s",
            f"orders sent {r.sent}, accepted (201) {r.accepted}, "
            f"rejected {dict(r.rejected) or 'none'}",
            f"settled: {r.confirmed} confirmed + {r.failed} failed + {r.cancelled} "
            f"cancelled, {r.pending} pending",
            *([r.shapes] if r.shapes else []),
            *([r.stored] if r.stored else []),
            r.cancels.render(),
            f"load {r.load_seconds:.1f}s; time to settle after the last fault: "
            f"{r.settle_seconds:.1f}s",
            f"faults injected: {faults or 'none'} ({r.malformed_injected} malformed messages; "
            f"{r.connections_killed} MariaDB connections killed)",
            *(
                f"  node loss {i}: {loss.node} down {loss.back - loss.killed:.1f}s"
                for i, loss in enumerate(self.losses, 1)
            ),
            f"throughput and latency around the {self.losses_under_load} node losses under "
            f"load ({self.window_note}):",
            *(self.phases[p].render(p) for p in PHASES),
            self.overall.render("overall"),
            f"cache: {r.cache_compared} products compared, {len(r.cache_mismatches)} mismatches",
            f"dead-letter queues: {r.dead_letters}",
            *render_checks(r.checks),
            f"reproduce: {r.command}",
        ]
        return "\n".join(lines)


class ClusterFaults(Faults):
    """The servers scenario's faults, plus a broker node's kill -9 and return."""

    def __init__(
        self,
        stack: Stack,
        config: ChaosConfig,
        rng: random.Random,
        report: ChaosReport,
        cluster: RabbitCluster,
        node_down_seconds: float,
    ) -> None:
        super().__init__(stack, config, rng, report)
        self.cluster, self.node_down_seconds = cluster, node_down_seconds
        self.losses: list[NodeLoss] = []

    async def _node(self) -> bool:
        index = len(self.losses) % self.cluster.size  # each node in turn
        node = self.cluster.nodes[index]
        was_running = node.alive()
        killed = time.time()
        await asyncio.to_thread(self.cluster.kill, index)
        gone = was_running and not node.alive()  # it ran, and the kill ended it
        print(f"\n  kill -9 of {node.name}" + ("" if gone else " (was not running)"))
        try:
            await asyncio.sleep(self.node_down_seconds)
        finally:
            await asyncio.to_thread(self.cluster.restart, index)
        if gone:
            self.losses.append(NodeLoss(node.name, killed, time.time()))
        return gone


async def _steady_load(
    order_url: str,
    mix: OrderMix,
    rate: float,
    seconds: float,
    rng: random.Random,
    *,
    canceller: Canceller,
) -> list[tuple[float, LoadResult]]:
    """Open-loop orders for ``seconds``, one second's worth started every second whatever
    the state of the earlier ones; each chunk with its start (wall clock). The orders are
    drawn from ``mix``; the ``canceller`` is told of every accepted one."""
    chunks: list[tuple[float, asyncio.Task[LoadResult]]] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        task = asyncio.create_task(
            drive_orders(
                [order_url],
                mix,
                count=max(1, round(rate)),
                rate=rate,
                rng=rng,
                connections=64,
                timeout=10.0,
                on_accepted=canceller.submit,
            )
        )
        chunks.append((time.time(), task))
        await asyncio.sleep(1.0)
    return [(at, await task) for at, task in chunks]


def _phase_of(at: float, losses: list[NodeLoss], window: float) -> str | None:
    for loss in losses:
        if loss.killed - window <= at < loss.killed:
            return "before"
        if loss.killed <= at < loss.back:
            return "during"
        if loss.back <= at < loss.back + window:
            return "after"
    return None


async def _figures(
    report: ClusterChaosReport,
    chunks: list[tuple[float, LoadResult]],
    database_url: str,
    window: float,
) -> None:
    if not chunks:
        return
    load_from, load_to = chunks[0][0], chunks[-1][0] + 1
    # Only node losses that began while orders flowed; their windows cut at the load's end.
    losses = [loss for loss in report.losses if load_from <= loss.killed < load_to]
    report.losses_under_load = len(losses)

    report.overall.seconds = load_to - load_from
    for at, chunk in chunks:
        # Each second of load counts in one phase at most (windows of successive losses
        # can overlap: the first loss's phase wins), and so does each settlement.
        phase = _phase_of(at, losses, window)
        if phase is not None:
            report.phases[phase].seconds += 1
        for figures in [report.overall] + ([report.phases[phase]] if phase else []):
            figures.accepted += len(chunk.accepted)
            figures.rejected += sum(chunk.rejected.values())
            figures.accept_latencies += chunk.accept_latencies
    engine = harness_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(orders.c.created_at, orders.c.updated_at).where(
                    orders.c.status.in_(("confirmed", "failed"))
                )
            )
            settled = [(_epoch(created), _epoch(updated)) for created, updated in rows]
    finally:
        await engine.dispose()
    for created, updated in settled:
        if updated < load_to and (phase := _phase_of(updated, losses, window)) is not None:
            report.phases[phase].settled += 1
        if (phase := _phase_of(created, losses, window)) is not None:
            report.phases[phase].settle_latencies.append(updated - created)
        if updated < load_to:
            report.overall.settled += 1
        report.overall.settle_latencies.append(updated - created)


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


async def run_cluster_chaos(config: ClusterChaosConfig) -> ClusterChaosReport:
    require_loopback(servers.MYSQL_HOST, servers.REDIS_HOST)
    rng = random.Random(config.seed)
    report = ClusterChaosReport()
    report.base.command = config.command()
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="orderstack-cluster-chaos-"))
    cluster = RabbitCluster()
    sandbox: ClusterSandbox | None = None
    stack: Stack | None = None
    balancer: Balancer | None = None
    try:
        await asyncio.to_thread(cluster.start)
        report.cluster_start_seconds = cluster.start_seconds
        print(f"cluster up in {cluster.start_seconds:.1f}s: {', '.join(cluster.urls)}")
        sandbox = ClusterSandbox("cchaos", cluster=cluster)
        await asyncio.to_thread(sandbox.create)
        await asyncio.to_thread(cluster.add_vhost, sandbox.name)
        stack = Stack(
            sandbox,
            log_dir,
            config.product_replicas,
            config.order_replicas,
            extra_env={"CACHE_REPAIR_INTERVAL_SECONDS": f"{config.cache_repair_interval:g}"},
        )
        await asyncio.to_thread(stack.start)
        await asyncio.to_thread(stack.wait_ready, 60.0)
        balancer = Balancer(
            {
                "order": [p.url.removeprefix("http://") for p in stack.orders],
                "product": [p.url.removeprefix("http://") for p in stack.products],
            }
        )
        await asyncio.to_thread(balancer.start)
        product_url = balancer.url("product")
        expected = config.rate * config.duration
        units = OrderMix.mixed(
            {1: Decimal(1)}, max_lines=config.max_lines, max_quantity=config.max_quantity
        ).expected_units()
        # The stock ratio is to the orders of one line of 1 to 5 units (3 on average) this
        # run placed before orders had several lines: scaled by the units an order of the
        # mix asks for, so that --stock-ratio means what it meant.
        total_stock = int(expected * config.stock_ratio * max(1.0, units / 3))
        initial: dict[int, int] = {}
        prices: dict[int, Decimal] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(config.products):
                qty = total_stock // config.products + (
                    1 if i < total_stock % config.products else 0
                )
                product_id = await create_product(
                    client, product_url, f"cc-{i}", qty, float(catalog_price(i))
                )
                initial[product_id], prices[product_id] = qty, catalog_price(i)
            deleted = await create_product(client, product_url, "cc-deleted", 10)
            restocked = await create_product(client, product_url, "cc-restocked", 10)
        mix = OrderMix.mixed(prices, max_lines=config.max_lines, max_quantity=config.max_quantity)
        chaos_config = ChaosConfig(
            outage_seconds=config.outage_seconds,
            connection_kill_rounds=2,
            connection_kill_every=0,
        )
        faults = ClusterFaults(
            stack, chaos_config, rng, report.base, cluster, config.node_down_seconds
        )
        catalogue = asyncio.create_task(
            change_catalogue(stack, deleted, restocked, config.duration / 2)
        )
        # Cancels go through the balancer too (two at once may meet two replicas).
        canceller = Canceller(
            [balancer.url("order")], config.cancel_fraction, random.Random(rng.random())
        )
        load = asyncio.create_task(
            _steady_load(
                balancer.url("order"),
                mix,
                config.rate,
                config.duration,
                rng,
                canceller=canceller,
            )
        )
        load_started = time.monotonic()
        others = [f for f in config.faults if f != "node"] or ["node"]
        # A node loss every other fault; the others in turn between them.
        schedule = [x for other in others for x in ("node", other)]
        if "node" not in config.faults:
            schedule = others
        n = 0
        while (
            not load.done()
            or n < len(schedule)
            or ("node" in config.faults and len(faults.losses) < config.node_kills)
        ):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(load), config.fault_interval)
            await faults.inject(schedule[n % len(schedule)])
            n += 1
        chunks = await load
        report.base.load_seconds = time.monotonic() - load_started
        report.base.cancels = await canceller.finish()
        report.losses = faults.losses
        catalogue_problems = await catalogue
        print()
        result = LoadResult()
        for _, chunk in chunks:
            result.add(chunk)
        base = report.base
        base.sent, base.rejected, base.accepted = result.sent, result.rejected, len(result.accepted)
        for process in [*stack.products, *stack.orders]:
            if not process.alive():
                process.start()
        state, base.settle_seconds = await wait_settled(
            sandbox.database_url, sandbox.amqp_url, config.settle_timeout, sandbox.queue_counts
        )
        (
            base.cache_compared,
            base.cache_mismatches,
            base.cache_seconds,
        ) = await wait_cache_consistent(
            sandbox.database_url, sandbox.redis_url, 2 * config.cache_repair_interval + 1
        )
        base.confirmed = state.by_status.get("confirmed", 0)
        base.failed = state.by_status.get("failed", 0)
        base.cancelled = state.by_status.get("cancelled", 0)
        base.pending = state.pending
        base.dead_letters = {k: v for k, v in state.queue_depths.items() if k.endswith(".dlq")}
        base.shapes = result.render_shapes()
        base.stored = await order_figures(sandbox.database_url)
        base.checks = await invariant_checks(
            sandbox.database_url,
            initial,
            result.accepted,
            state,
            base.cancels,
            malformed_injected=base.malformed_injected,
            cache_mismatches=base.cache_mismatches,
            catalogue_problems=catalogue_problems,
            prices=prices,
            several_lines=mix.several_lines,
        )
        report.window_note = (
            f"{config.window:g}s before each, while the node is down, {config.window:g}s after "
            "it is back; summed over the losses; settled/s counts settlements in the phase, "
            "create->settle the orders created in it"
        )
        await _figures(report, chunks, sandbox.database_url, config.window)
        return report
    finally:
        if balancer is not None:
            balancer.stop()
        if stack is not None:
            stack.stop()
        if sandbox is not None:
            await asyncio.to_thread(sandbox.drop)
        await asyncio.to_thread(cluster.stop)
        print(f"service logs: {log_dir}")


__all__ = ["CLUSTER_FAULTS", "ClusterChaosConfig", "ClusterChaosReport", "run_cluster_chaos"]

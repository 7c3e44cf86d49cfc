"""`make bench`: open-loop load at a ladder of rates against the services as separate
processes on the real servers, with accept and settle latencies, settled orders/s, errors,
backlog, CPU and memory per process, and the cached product GET against a bare endpoint.

``--seed-scenario`` replays the seed's own load test instead: constant arrival of 1,000
camelCase orders/s for 30 s over two products, judged by its thresholds (accept p95 < 500 ms,
failed < 10 %, an ``id`` in every 201); it exits non-zero when one fails.

    python -m harness.bench --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import sqlalchemy as sa
import uvloop

from harness.invariants import (
    harness_engine,
    settlement,
    stock_violations,
    wait_settled,
)
from harness.load import NO_ID, drive_orders
from harness.plot import plot_bench
from harness.profiling import Profiler
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.orders.repository import orders

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The seed's load test: k6 constant-arrival-rate, its rate, duration and thresholds.
SEED_RATE, SEED_SECONDS, SEED_PRODUCTS = 1000.0, 30.0, 2
SEED_P95_MS, SEED_MAX_FAILED = 500.0, 0.10


@dataclass
class BenchConfig:
    rates: tuple[float, ...] = (250, 500, 1000, 1500)
    step_seconds: float = 60.0
    product_replicas: int = 1
    order_replicas: int = 1
    generators: int = 2  # load-generator processes
    products: int = 20
    saturation_seconds: float = 5.0
    out_dir: Path = Path("bench-results")
    settle_timeout: float = 300.0  # an overloaded step drains its backlog before the next
    profile: bool = False  # py-spy flame graphs and top frames of each service, per step
    service_env: dict[str, str] = field(default_factory=dict)  # settings for the services
    seed_scenario: bool = False  # camelCase bodies, and each step judged by the seed's checks

    @classmethod
    def seed(cls, **changes: Any) -> BenchConfig:
        """The seed's load test: one step of constant arrival, no product GET saturation."""
        scenario: dict[str, Any] = {
            "rates": (SEED_RATE,),
            "step_seconds": SEED_SECONDS,
            "products": SEED_PRODUCTS,
            "saturation_seconds": 0.0,
            "seed_scenario": True,
        }
        return cls(**{**scenario, **changes})


@dataclass
class Step:
    offered_rate: float
    sent: int = 0
    accepted: int = 0  # 201s the clients received
    stored: int = 0  # orders the step stored and settled (some clients gave up first)
    errors: dict[str, int] = field(default_factory=dict)
    accept_ms: dict[str, float] = field(default_factory=dict)
    settle_ms: dict[str, float] = field(default_factory=dict)
    settled_per_second: float = 0.0
    backlog_at_end: dict[str, int] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    # The services' CPU time (all processes, from the step's start until its orders
    # settled) divided by the orders stored: what one order costs the services.
    cpu_ms_per_order: float = 0.0
    metrics_scrapes: dict[str, str] = field(default_factory=dict)  # process -> saved /metrics
    memory_mb: dict[str, float] = field(default_factory=dict)  # each service, after the step
    profile: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)  # the seed scenario's verdicts


def seed_checks(step: Step) -> list[dict[str, Any]]:
    """The seed load test's thresholds applied to one step: each ``{"check", "measured",
    "passed"}``. Latency is the accept latency of the 201s, from each scheduled send time;
    failed is every request that got no 2xx (error status, timeout, connection error)."""
    missing_id = step.errors.get(NO_ID, 0)
    failed = sum(n for kind, n in step.errors.items() if kind != NO_ID)
    p95 = step.accept_ms.get("p95")
    failed_ratio = failed / step.sent if step.sent else 1.0
    return [
        {
            "check": f"p95 < {SEED_P95_MS:g} ms",
            "measured": "no answer" if p95 is None else f"{p95} ms",
            "passed": p95 is not None and p95 < SEED_P95_MS,
        },
        {
            "check": f"failed < {100 * SEED_MAX_FAILED:g} %",
            "measured": f"{100 * failed_ratio:.2f} % ({failed} of {step.sent})",
            "passed": failed_ratio < SEED_MAX_FAILED,
        },
        {
            "check": "id in every 201",
            "measured": f"{missing_id} of {step.accepted + missing_id} without id",
            "passed": missing_id == 0 and step.accepted > 0,
        },
    ]


def seed_passed(results: dict[str, Any]) -> bool:
    """Whether every check of every step held (a run without checks has nothing to fail)."""
    return all(check["passed"] for s in results["steps"] for check in s["checks"])


def _percentiles(values: list[float], points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    result = {
        f"p{p}": round(ordered[min(len(ordered) - 1, len(ordered) * p // 100)] * 1000, 2)
        for p in points
    }
    result["max"] = round(ordered[-1] * 1000, 2)
    return result


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _server_pids() -> dict[str, int]:
    pids: dict[str, int] = {}
    for name, pattern in (
        ("mariadb", "mariadbd"),
        ("rabbitmq", "beam.smp"),
        ("redis", "redis-server"),
    ):
        found = subprocess.run(["pgrep", "-o", "-f", pattern], capture_output=True, text=True)
        if found.stdout.strip():
            pids[name] = int(found.stdout.split()[0])
    return pids


def _generate(
    urls: list[str], products: list[int], count: int, rate: float, seed: int, camel_case: bool
) -> tuple[list[int], list[float], dict[str, int], float]:
    """One load-generator process: (accepted ids, accept latencies, errors, the CPU seconds
    this step cost it). The pool's processes live across steps: only this step is counted."""
    started = time.process_time()
    result = uvloop.run(
        drive_orders(
            urls,
            products,
            count=count,
            rate=rate,
            rng=random.Random(seed),
            camel_case=camel_case,
        )
    )
    cpu = time.process_time() - started
    return result.accepted, result.accept_latencies, dict(result.rejected), cpu


def _saturate(url: str, seconds: float, seed: int) -> int:
    """Closed loop: as many GETs as 32 connections manage in ``seconds``; returns the count."""

    async def run() -> int:
        done = 0
        deadline = time.monotonic() + seconds
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32), timeout=aiohttp.ClientTimeout(total=10)
        ) as session:

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    async with session.get(url) as response:
                        await response.read()
                        if response.status == 200:
                            done += 1

            await asyncio.gather(*(worker() for _ in range(32)))
        return done

    return uvloop.run(run())


async def _settle_latencies(database_url: str, after_id: int) -> tuple[list[float], float, int]:
    """Every order stored after ``after_id`` (the step's, whether or not its client saw
    the 201 before giving up): seconds from creation to settlement of those settled, the
    last settlement's time, and the highest order id."""
    engine = harness_engine(database_url)
    latencies: list[float] = []
    last, top = 0.0, after_id
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.select(
                    orders.c.id, orders.c.status, orders.c.created_at, orders.c.updated_at
                ).where(orders.c.id > after_id)
            )
            for order_id, status, created, updated in rows:
                top = max(top, order_id)
                if status != "pending":
                    latencies.append((updated - created).total_seconds())
                    last = max(last, updated.timestamp())
    finally:
        await engine.dispose()
    return latencies, last, top


async def _product_get(
    pool: ProcessPoolExecutor, stack: Stack, product_id: int, seconds: float
) -> dict[str, Any]:
    """Saturate the cached product GET and the bare ``/livez`` of the same server."""
    loop = asyncio.get_running_loop()
    # Alternated, best of three each: a shared machine drifts, and a pair measured
    # side by side drifts together.
    server = stack.products[0].process.pid if stack.products[0].process else 0
    best: dict[str, tuple[int, float]] = {"cached": (0, 0.0), "bare": (0, 0.0)}
    for _ in range(3):
        for kind, path in (("cached", f"/products/{product_id}"), ("bare", "/livez")):
            ticks, started = _cpu_ticks(server), time.monotonic()
            done = await loop.run_in_executor(pool, _saturate, stack.product_url + path, seconds, 1)
            busy = (_cpu_ticks(server) - ticks) / CLOCK_TICKS
            cpu = round(100 * busy / (time.monotonic() - started), 1)
            best[kind] = max(best[kind], (done, cpu))
    (cached, cached_cpu), (ceiling, ceiling_cpu) = best["cached"], best["bare"]
    return {
        "cached_get_per_second": round(cached / seconds, 1),
        "bare_endpoint_per_second": round(ceiling / seconds, 1),
        # Below ~95 %, the server was not the limit: the client (one process) was.
        "server_cpu_percent": {"cached": cached_cpu, "bare": ceiling_cpu},
        "ratio_to_ceiling": round(cached / ceiling, 3) if ceiling else None,
    }


async def _save_scrapes(stack: Stack, out_dir: Path, rate: float) -> dict[str, str]:
    """Each service's /metrics after a step, saved beside the results (none when the
    services run with METRICS_ENABLED=false)."""
    texts: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for process in [*stack.products, *stack.orders]:
            response = await client.get(f"{process.url}/metrics")
            if response.status_code == 200:
                texts[process.name] = response.text
    return _write_scrapes(texts, out_dir, f"{time.strftime('%Y%m%dT%H%M%S')}-{rate:g}")


def _write_scrapes(texts: dict[str, str], out_dir: Path, stem: str) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: dict[str, str] = {}
    for name, text in texts.items():
        path = out_dir / f"metrics-{stem}-{name}.txt"
        path.write_text(text)
        saved[name] = str(path)
    return saved


async def run_bench(config: BenchConfig) -> dict[str, Any]:
    sandbox = await asyncio.to_thread(Sandbox("bench").create)
    log_dir = Path(tempfile.mkdtemp(prefix="orderstack-bench-"))
    stack = Stack(
        sandbox,
        log_dir,
        config.product_replicas,
        config.order_replicas,
        extra_env=dict(config.service_env),
    )
    results: dict[str, Any] = {"config": {k: str(v) for k, v in asdict(config).items()}}
    try:
        await asyncio.to_thread(stack.start)
        demand = int(sum(r * config.step_seconds for r in config.rates))
        initial: dict[int, int] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(config.products):
                qty = demand // config.products + 1  # enough stock: every order confirms
                response = await client.post(
                    f"{stack.product_url}/products",
                    json={"name": f"bench-{i}", "price": 10, "qty": qty},
                )
                response.raise_for_status()
                initial[response.json()["id"]] = qty
        processes = {
            p.name: p.process.pid for p in [*stack.products, *stack.orders] if p.process is not None
        }
        watched = {**processes, **_server_pids()}
        steps: list[Step] = []
        all_accepted: list[int] = []
        last_id = 0  # the highest order id before the step
        loop = asyncio.get_running_loop()
        profiler = Profiler(config.out_dir) if config.profile else None
        with ProcessPoolExecutor(config.generators) as pool:
            for rate in config.rates:
                step = Step(offered_rate=rate)
                count = int(rate * config.step_seconds)
                print(f"step {rate:g} orders/s for {config.step_seconds:g}s ...", flush=True)
                if profiler is not None:
                    profiler.start(processes, f"{rate:g}", config.step_seconds * 0.8)
                before = {n: _cpu_ticks(p) for n, p in watched.items()}
                started = time.time()
                share = count // config.generators
                futures = [
                    loop.run_in_executor(
                        pool,
                        _generate,
                        [p.url for p in stack.orders],
                        list(initial),
                        share,
                        rate / config.generators,
                        i + int(rate),
                        config.seed_scenario,
                    )
                    for i in range(config.generators)
                ]
                outputs = await asyncio.gather(*futures)
                elapsed = time.time() - started
                after = {n: _cpu_ticks(p) for n, p in watched.items()}
                step.cpu_percent = {
                    n: round(100 * (after[n] - before[n]) / CLOCK_TICKS / elapsed, 1)
                    for n in watched
                }
                step.cpu_percent["load-generators"] = round(
                    100 * sum(o[3] for o in outputs) / elapsed, 1
                )
                if profiler is not None:
                    step.profile = profiler.finish()
                accepted = [i for o in outputs for i in o[0]]
                errors: Counter[str] = Counter()
                for o in outputs:
                    errors.update(o[2])
                step.sent, step.accepted, step.errors = (
                    share * config.generators,
                    len(accepted),
                    dict(errors),
                )
                step.accept_ms = _percentiles([lat for o in outputs for lat in o[1]])
                state = await settlement(sandbox.database_url, sandbox.amqp_url)
                step.backlog_at_end = {
                    "outbox_unsent": state.unsent_events,
                    **{k: v for k, v in state.queue_depths.items() if not k.endswith(".dlq")},
                }
                await wait_settled(sandbox.database_url, sandbox.amqp_url, config.settle_timeout)
                settled_ticks = sum(_cpu_ticks(p) - before[n] for n, p in processes.items())
                latencies, last, last_id = await _settle_latencies(sandbox.database_url, last_id)
                step.stored = len(latencies)
                step.cpu_ms_per_order = round(
                    1000 * settled_ticks / CLOCK_TICKS / max(step.stored, 1), 3
                )
                step.metrics_scrapes = await _save_scrapes(stack, config.out_dir, rate)
                step.settle_ms = _percentiles(latencies, (50, 99))
                step.settled_per_second = round(len(latencies) / max(last - started, 1e-9), 1)
                step.memory_mb = {n: round(_rss_mb(p), 1) for n, p in processes.items()}
                if config.seed_scenario:
                    step.checks = seed_checks(step)
                all_accepted += accepted
                steps.append(step)
                print(
                    f"  accepted {step.accepted}/{step.sent}, accept {step.accept_ms}, "
                    f"settle {step.settle_ms}, settled/s {step.settled_per_second}",
                    flush=True,
                )
            if config.saturation_seconds > 0:
                results["product_get"] = await _product_get(
                    pool, stack, next(iter(initial)), config.saturation_seconds
                )
        results["steps"] = [asdict(s) for s in steps]
        results["memory_mb_after"] = {n: round(_rss_mb(p), 1) for n, p in processes.items()}
        results["violations"] = await stock_violations(sandbox.database_url, initial, all_accepted)
        return results
    finally:
        await asyncio.to_thread(stack.stop)
        await asyncio.to_thread(sandbox.drop)


def render(results: dict[str, Any]) -> str:
    header = (
        f"{'rate':>6} {'sent':>6} {'201':>6} {'stored':>6} {'acc p50':>8} {'p95':>8} {'p99':>8} "
        f"{'max':>8} {'settle p50':>10} {'p99':>8} {'settled/s':>9}  errors"
    )
    lines = [header]
    for s in results["steps"]:
        a, st = s["accept_ms"], s["settle_ms"]
        lines.append(
            f"{s['offered_rate']:>6g} {s['sent']:>6} {s['accepted']:>6} {s['stored']:>6} "
            f"{a.get('p50', 0):>8} "
            f"{a.get('p95', 0):>8} {a.get('p99', 0):>8} {a.get('max', 0):>8} "
            f"{st.get('p50', 0):>10} {st.get('p99', 0):>8} {s['settled_per_second']:>9}  "
            f"{s['errors'] or '-'}"
        )
        lines.append(f"       cpu %: {s['cpu_percent']}  backlog at end: {s['backlog_at_end']}")
        lines.append(f"       services' cpu per order: {s['cpu_ms_per_order']} ms")
        if s.get("metrics_scrapes"):
            lines.append(f"       /metrics after the step: {s['metrics_scrapes']}")
        lines.append(f"       memory MB after the step: {s['memory_mb']}")
        for process, frames in s.get("profile", {}).items():
            lines.append(f"       {process} top frames, own time %:")
            lines += [f"         {share:5.1f}  {frame}" for frame, share in frames["own"][:8]]
            lines.append(f"       {process} top frames, total time %:")
            lines += [f"         {share:5.1f}  {frame}" for frame, share in frames["total"][:12]]
    if "product_get" in results:
        lines.append(f"product GET: {results['product_get']}")
    lines.append(f"memory after (MB): {results['memory_mb_after']}")
    lines.append(
        "invariants: "
        + ("all hold" if not results["violations"] else f"VIOLATED {results['violations']}")
    )
    judged = [s for s in results["steps"] if s["checks"]]
    for s in judged:
        lines.append(
            f"seed scenario: {s['sent']} camelCase orders at {s['offered_rate']:g}/s, "
            "the seed load test's thresholds:"
        )
        lines += [
            f"  {c['check']:<16} {c['measured']:<32} {'PASS' if c['passed'] else 'FAIL'}"
            for c in s["checks"]
        ]
    if judged:
        lines.append(f"seed scenario: {'PASS' if seed_passed(results) else 'FAIL'}")
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """The JSON file and the PNG plot of a run, side by side; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"bench-{time.strftime('%Y%m%dT%H%M%S')}"
    out = stem.with_suffix(".json")
    out.write_text(json.dumps(results, indent=2))
    return out, plot_bench(results, stem.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="orderstack-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = BenchConfig()
    parser.add_argument(
        "--seed-scenario",
        action="store_true",
        help=f"the seed's load test: {SEED_RATE:g} camelCase orders/s for {SEED_SECONDS:g} s "
        f"over {SEED_PRODUCTS} products, PASS/FAIL on p95 < {SEED_P95_MS:g} ms, "
        f"failed < {100 * SEED_MAX_FAILED:g} %%, an id in every 201 (non-zero exit on FAIL)",
    )
    parser.add_argument(
        "--rates",
        help="offered orders/s per step, comma-separated (default "
        f"{','.join(f'{r:g}' for r in defaults.rates)}; with --seed-scenario {SEED_RATE:g})",
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        help=f"seconds per step (default {defaults.step_seconds:g}; "
        f"with --seed-scenario {SEED_SECONDS:g})",
    )
    parser.add_argument("--product-replicas", type=int, default=defaults.product_replicas)
    parser.add_argument("--order-replicas", type=int, default=defaults.order_replicas)
    parser.add_argument("--generators", type=int, default=defaults.generators)
    parser.add_argument("--out", type=Path, default=defaults.out_dir)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the services (README's configuration table), e.g. DB_POOL_SIZE=20",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy flame graphs (SVG) and top frames of each service per step",
    )
    args = parser.parse_args(argv)
    chosen: dict[str, Any] = {
        "product_replicas": args.product_replicas,
        "order_replicas": args.order_replicas,
        "generators": args.generators,
        "out_dir": args.out,
        "profile": args.profile,
        "service_env": dict(item.split("=", 1) for item in args.set),
    }
    if args.rates is not None:
        chosen["rates"] = tuple(float(r) for r in args.rates.split(","))
    if args.step_seconds is not None:
        chosen["step_seconds"] = args.step_seconds
    config = BenchConfig.seed(**chosen) if args.seed_scenario else BenchConfig(**chosen)
    results = asyncio.run(run_bench(config))
    out, picture = write_results(results, config.out_dir)
    print(render(results))
    given = " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"results: {out}; plot: {picture}; reproduce with: "
        f'python -m harness.bench {given}  (or: make bench ARGS="{given}")'
    )
    return 1 if results["violations"] or not seed_passed(results) else 0


if __name__ == "__main__":
    sys.exit(main())

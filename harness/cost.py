"""What one settled order costs in CPU, in units that travel: bare FastAPI GETs measured on
the same box in the same run.

The yardstick: harness/bare_app.py (uvicorn, uvloop, httptools, one worker, one constant
JSON body) loaded open loop at a fixed rate it sustains (1,000/s) by this module's client
(the load generator's keep-alive pool) in another process; the server's CPU seconds over
the requests it answered is one bare GET's cost.

An order's cost: the CPU of every process of the system (the services, MariaDB, RabbitMQ,
Redis) from a step's start until its orders settled, over the orders settled. The load
generators are reported apart and not counted. MariaDB, RabbitMQ and Redis are counted
whole: on a box they share with other work, that work is counted too.

Beside it, each process's share and the mean batch sizes of the services' stages, from the
``batch_size{stage}`` histograms they export on /metrics (read before and after the step).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvloop
from prometheus_client.parser import text_string_to_metric_families

from harness.http_ladder import CLOCK_TICKS, BareServer, cpu_ticks
from harness.http_pool import HttpPool

# The bare GET's rate: what one GET costs depends on the rate it comes at (on this box,
# 2026-12-05: 235 us at 500/s, 202 at 1,000/s, 157 at 2,000/s, 110 closed loop with 64
# connections, where each turn of the loop serves many); the unit is the GET at 1,000/s.
BARE_RATE = 1000.0
# The low rate: a sixteenth of the bare GETs one core answers.
LOW_RATE_FRACTION = 16
LOW = "low"
# Processes that are the system (counted) by kind; anything else (the generators) is not.
SYSTEM_KINDS = ("order", "product", "mariadb", "rabbitmq", "redis")
GENERATORS = "load-generators"
# The goal of the cost work: an order near capacity at most this many bare GETs.
GOAL_BARE_GETS = 10.0


def kind(process: str) -> str | None:
    """order-0 -> order, mariadb -> mariadb; None for what is not the system."""
    head = process.split("-", 1)[0]
    return head if head in SYSTEM_KINDS else None


def bare_get_cost(
    body: str, seconds: float, rate: float = BARE_RATE, log_path: Path | None = None
) -> dict[str, Any]:
    """One bare GET's CPU, measured on harness/bare_app.py answering ``body``: the server
    process's CPU seconds over the requests it answered, loaded open loop at ``rate`` for
    ``seconds`` by this module's client in another process (after a one-second warm-up)."""
    with BareServer(body, log_path) as bare:
        pid = bare.process.pid if bare.process is not None else None
        assert pid is not None
        _drive(bare.url, rate, 1.0)  # warm: imports, connections, the loop's first turns
        ticks = cpu_ticks(pid)
        found = _drive(bare.url, rate, seconds)
        cpu = (cpu_ticks(pid) - ticks) / CLOCK_TICKS
    requests = int(found["requests"])
    if requests <= 0 or cpu <= 0 or found["failed"]:
        raise RuntimeError(f"the bare endpoint: {found}, {cpu} s of CPU")
    return {
        "rate": rate,
        "seconds": seconds,
        "requests": requests,
        "requests_per_second": round(requests / found["elapsed"], 1),
        "cpu_seconds": round(cpu, 3),
        "server_cpu_percent": round(100 * cpu / found["elapsed"], 1),
        "us_per_request": round(1e6 * cpu / requests, 1),
        # What one core answers bare, at this cost: requests per CPU second.
        "per_core_per_second": round(requests / cpu, 1),
        "client_cpu_seconds": found["client_cpu_seconds"],
    }


def _drive(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """``open_loop_gets`` in its own process (so it does not share this one's loop or
    core accounting): its figures, and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "harness.cost", "--url", url, "--rate", str(rate)]
        + ["--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"the open-loop client failed ({done.returncode}): {done.stderr}")
    found: dict[str, Any] = json.loads(done.stdout)
    spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    found["client_cpu_seconds"] = round(spent, 3)
    return found


def low_rate(bare: Mapping[str, Any]) -> float:
    """A sixteenth of the bare GETs one core answers, rounded to 10 orders/s."""
    return float(max(10, round(bare["per_core_per_second"] / LOW_RATE_FRACTION, -1)))


def batch_sums(metrics_text: str) -> dict[str, tuple[float, float]]:
    """``batch_size``'s (sum, count) per stage in one /metrics text."""
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "batch_size":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if stage is None:
                continue
            pair = found.setdefault(stage, [0.0, 0.0])
            if sample.name == "batch_size_sum":
                pair[0] = sample.value
            elif sample.name == "batch_size_count":
                pair[1] = sample.value
    return {stage: (pair[0], pair[1]) for stage, pair in found.items()}


def mean_batches(
    before: Mapping[str, str], after: Mapping[str, str]
) -> dict[str, dict[str, float | None]]:
    """Per process and stage, the mean batch size over the step: the items and batches
    added between two scrapes (None when the stage made no batch)."""
    means: dict[str, dict[str, float | None]] = {}
    for process, text in after.items():
        start = batch_sums(before.get(process, ""))
        means[process] = {}
        for stage, (items, batches) in batch_sums(text).items():
            items0, batches0 = start.get(stage, (0.0, 0.0))
            made = batches - batches0
            means[process][stage] = round((items - items0) / made, 2) if made > 0 else None
    return means


def step_cost(
    spent: Mapping[str, float],
    settled: int,
    bare_us: float | None,
    batches: Mapping[str, Mapping[str, float | None]],
) -> dict[str, Any]:
    """One step's cost of a settled order: ``spent`` is each process's CPU seconds (the
    generators' under ``load-generators``), ``settled`` the orders. In ms, in bare GETs
    (None without a yardstick), each system process's share in %, the generators' ms apart,
    and the mean batch sizes."""
    per_order = 1000 / max(settled, 1)  # CPU seconds -> ms per order
    system = {n: s * per_order for n, s in spent.items() if kind(n) is not None}
    total = sum(system.values())
    by_kind: dict[str, float] = {}
    for name, ms in system.items():
        by_kind[kind(name) or name] = by_kind.get(kind(name) or name, 0.0) + ms
    return {
        "settled": settled,
        "ms_per_order": round(total, 3),
        "bare_gets": round(1000 * total / bare_us, 2) if bare_us else None,
        "ms_by_process": {n: round(ms, 3) for n, ms in system.items()},
        "share_percent": {
            k: round(100 * ms / total, 1) if total else 0.0 for k, ms in by_kind.items()
        },
        "generators_ms_per_order": round(spent.get(GENERATORS, 0.0) * per_order, 3),
        "batch_mean": {p: dict(stages) for p, stages in batches.items()},
        "batches_per_order": batches_per_order(batches),
    }


def batches_per_order(batches: Mapping[str, Mapping[str, float | None]]) -> float | None:
    """How many batches one order took part in, over every stage of every process (the
    sum of 1 / mean batch size): the part of an order's cost that is shared with others
    grows with it. Two runs' costs compare only at similar values (docs/bench/README.md:
    the cost of an order fits a part per order plus this times a part per batch)."""
    means = [m for stages in batches.values() for m in stages.values() if m]
    return round(sum(1 / m for m in means), 3) if means else None


def kept_up(step: Mapping[str, Any], tolerance: float = 0.9) -> bool:
    """Whether a step's orders settled at (nearly) the rate they were offered."""
    return bool(step["settled_per_second"] >= tolerance * step["offered_rate"])


def headline(steps: list[dict[str, Any]], low: float | None) -> dict[str, Any]:
    """The two figures: the cost at the low rate (the step at ``low``, else the lowest),
    and near capacity (the highest offered rate whose orders settled at 90 % of it or
    more; the highest of all when none did)."""
    ones = [s for s in steps if s.get("lines", 1) == 1 and s.get("cost")]
    if not ones:
        return {}
    by_rate = sorted(ones, key=lambda s: s["offered_rate"])
    low_step = next((s for s in by_rate if low is not None and s["offered_rate"] == low), None)
    low_step = low_step or by_rate[0]
    keeping = [s for s in by_rate if kept_up(s)]
    near = keeping[-1] if keeping else by_rate[-1]
    return {
        name: {
            "offered_rate": s["offered_rate"],
            "settled_per_second": s["settled_per_second"],
            "kept_up": kept_up(s),
            **{k: s["cost"][k] for k in ("bare_gets", "ms_per_order", "share_percent")},
        }
        for name, s in (("low", low_step), ("near_capacity", near))
    }


STAGES = ("intake", "relay", "consumer")


def _batches_cell(batch_mean: Mapping[str, Mapping[str, float | None]], stage: str) -> str:
    cells = []
    for process in sorted(batch_mean):
        mean = batch_mean[process].get(stage)
        if stage in batch_mean[process]:
            cells.append(f"{process.split('-', 1)[0][0]}{'' if mean is None else f' {mean:g}'}")
    return " / ".join(cells) if cells else "-"


def render_cost(results: Mapping[str, Any]) -> list[str]:
    """The headline table: per step, cost in bare GETs and ms, each process's share, the
    generators apart, and the stages' mean batch sizes (o: order service, p: product)."""
    bare = results.get("bare_get")
    lines = []
    if bare:
        lines.append(
            f"one bare GET (harness/bare_app.py, open loop at {bare['rate']:g}/s for "
            f"{bare['seconds']:g} s, {bare['requests']:,} answered, server "
            f"{bare['server_cpu_percent']:g} % of a core): {bare['us_per_request']:g} us of "
            f"CPU; one core answers {bare['per_core_per_second']:,.0f}/s bare"
        )
    lines += [
        "cost of a settled order, every process of the system (generators apart, not counted):",
        "| offered/s | settled/s | bare GETs | ms/order | order | product | mariadb | rabbitmq "
        "| redis | generators ms | intake | relay o/p | consumer o/p | batches/order |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in results["steps"]:
        cost = s.get("cost")
        if not cost:
            continue
        share = cost["share_percent"]
        by_kind: dict[str, float] = {}
        for name, ms in cost["ms_by_process"].items():
            by_kind[kind(name) or name] = by_kind.get(kind(name) or name, 0.0) + ms
        cells = [f"{by_kind.get(k, 0.0):.2f} ({share.get(k, 0.0):g} %)" for k in SYSTEM_KINDS]
        rate = f"{s['offered_rate']:g}" + (f" x{s['lines']}" if s.get("lines", 1) != 1 else "")
        gets = "-" if cost["bare_gets"] is None else f"{cost['bare_gets']:g}"
        lines.append(
            f"| {rate} | {s['settled_per_second']:g} | {gets} | {cost['ms_per_order']:g} | "
            + " | ".join(cells)
            + f" | {cost['generators_ms_per_order']:g} | "
            + " | ".join(_batches_cell(cost["batch_mean"], stage) for stage in STAGES)
            + f" | {cost['batches_per_order'] if cost['batches_per_order'] is not None else '-'}"
            + " |"
        )
    head = results.get("headline") or {}
    for name, label in (("low", "low rate"), ("near_capacity", "near capacity")):
        h = head.get(name)
        if not h:
            continue
        gets = "-" if h["bare_gets"] is None else f"{h['bare_gets']:g} bare GETs"
        kept = "" if h["kept_up"] else " (did not keep up: the highest rate measured)"
        lines.append(
            f"headline, {label}: {gets}, {h['ms_per_order']:g} ms per settled order at "
            f"{h['offered_rate']:g}/s offered{kept}"
        )
    return lines


async def open_loop_gets(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """GET ``url`` at ``rate`` per second for ``seconds``, open loop (each request sent at
    its time whatever the answers before it), on the load generator's keep-alive pool:
    how many were answered 2xx, how many not, and the run's wall time."""
    pool = HttpPool(256)
    address = HttpPool.address(url)
    request = HttpPool.request_bytes("GET", url, b"", "application/json")
    answered, failed = 0, 0

    async def one() -> None:
        nonlocal answered, failed
        try:
            async with asyncio.timeout(10):
                status, _ = await pool.send(address, request)
        except (OSError, TimeoutError):
            failed += 1
            return
        if 200 <= status < 300:
            answered += 1
        else:
            failed += 1

    count = int(rate * seconds)
    in_flight: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    try:
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        pool.close()
    return {"requests": answered, "failed": failed, "elapsed": time.monotonic() - start}


def main(argv: list[str] | None = None) -> None:
    """The open-loop client, in its own process: its figures as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m harness.cost")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    print(json.dumps(uvloop.run(open_loop_gets(args.url, args.rate, args.seconds))))


if __name__ == "__main__":
    main()

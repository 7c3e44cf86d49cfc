"""SIGTERM to a replica under load, on the real stack (separate processes, MariaDB, RabbitMQ,
Redis): requests in flight are answered, new connections are refused, the consumer settles
what it holds, the relay publishes once more, and the process exits 0 within its bound.

Each client sends one request after another on a keep-alive connection, with an
Idempotency-Key (orders) or a unique name (products), and moves to the next replica when
a connection is refused. A request that fails after its connection was made (reset, closed
without an answer) is checked against the database: it must never have been accepted
(for an order, its key replayed on a live replica creates the order then, rather than
answering ``Idempotent-Replayed``). Figures are printed (``-s``) and written beside the logs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from harness.invariants import harness_engine, stock_violations, wait_settled
from harness.processes import ServiceProcess
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.config import load_settings

from .workflows import create_product

pytestmark = pytest.mark.e2e

CLIENTS = 12  # concurrent clients in all
LOAD_BEFORE_SECONDS = 1.0  # steady load before the signal
LOAD_AFTER_SECONDS = 0.5  # and after the process has exited
IN_FLIGHT_WAIT_SECONDS = 10.0  # for requests in flight on the victim, before the signal
STOCK = 1_000_000
EXIT_BOUND = load_settings().shutdown_bound_seconds  # 15 s with the default settings


@pytest.fixture(scope="module")
def stack(
    make_sandbox: Callable[[str], Sandbox], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Two replicas of each service, so that the load goes on while one stops."""
    running = Stack(
        make_sandbox("stop"), tmp_path_factory.mktemp("logs"), product_replicas=2, order_replicas=2
    ).start()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@dataclass
class Outcome:
    kind: str  # "ok", "status", "refused" (connect failed), "cut" (failed after connecting)
    url: str
    started: float
    ended: float
    key: str
    body: dict[str, Any]
    result: Any = None  # the order id / product id, the status, or the error


@dataclass
class Load:
    """``CLIENTS`` clients, each with its list of replicas (the first is its own)."""

    path: str
    body: Callable[[str], dict[str, Any]]
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Requests sent and not yet answered, per replica URL.
    in_flight: Counter[str] = field(default_factory=Counter)

    async def client(self, targets: list[str]) -> None:
        current = 0
        async with httpx.AsyncClient(
            timeout=10, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
        ) as http:
            while not self.stop.is_set():
                key = str(uuid.uuid4())
                body, url = self.body(key), targets[current]
                started = time.monotonic()
                self.in_flight[url] += 1
                try:
                    response = await http.post(
                        f"{url}{self.path}", json=body, headers={"Idempotency-Key": key}
                    )
                except httpx.ConnectError as exc:  # refused: the request never went out
                    self.outcomes.append(
                        Outcome("refused", url, started, time.monotonic(), key, body, repr(exc))
                    )
                    current = (current + 1) % len(targets)
                    continue
                except httpx.TransportError as exc:
                    self.outcomes.append(
                        Outcome("cut", url, started, time.monotonic(), key, body, repr(exc))
                    )
                    continue
                finally:
                    self.in_flight[url] -= 1
                ended = time.monotonic()
                if response.status_code == 201:
                    self.outcomes.append(
                        Outcome("ok", url, started, ended, key, body, response.json()["id"])
                    )
                else:
                    self.outcomes.append(
                        Outcome("status", url, started, ended, key, body, response.status_code)
                    )


def log_events(process: ServiceProcess) -> dict[str, dict[str, Any]]:
    """The last JSON log line of each event name in the replica's log."""
    found: dict[str, dict[str, Any]] = {}
    for line in process.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            found[str(record.get("event"))] = record
    return found


async def stop_under_load(
    victim: ServiceProcess, loads: list[tuple[Load, list[list[str]]]]
) -> tuple[float, int, float]:
    """Run the loads, SIGTERM ``victim`` in the middle; return (signal time, exit code,
    seconds to exit)."""
    tasks = [
        asyncio.create_task(load.client(targets)) for load, clients in loads for targets in clients
    ]
    await asyncio.sleep(LOAD_BEFORE_SECONDS)
    assert victim.process is not None
    # The signal lands while every load aimed at the victim has a request in flight on it
    # (on two busy cores a given instant may find none): what it does to them is the test.
    aimed = [load for load, clients in loads if any(victim.url in t for t in clients)]
    deadline = time.monotonic() + IN_FLIGHT_WAIT_SECONDS
    while not all(load.in_flight[victim.url] > 0 for load in aimed):
        assert time.monotonic() < deadline, [dict(load.in_flight) for load in aimed]
        await asyncio.sleep(0.001)
    signalled = time.monotonic()
    victim.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(victim.process.wait, EXIT_BOUND + 10)
    exit_seconds = time.monotonic() - signalled
    await asyncio.sleep(LOAD_AFTER_SECONDS)
    for load, _ in loads:
        load.stop.set()
    await asyncio.gather(*tasks)
    return signalled, code, exit_seconds


def figures_of(load: Load, victim_url: str, signalled: float) -> dict[str, int]:
    on_victim = [o for o in load.outcomes if o.url == victim_url]
    return {
        "requests": len(load.outcomes),
        "answered": sum(o.kind == "ok" for o in load.outcomes),
        "to_victim": len(on_victim),
        "in_flight_at_signal_answered": sum(
            o.kind == "ok" and o.started < signalled < o.ended for o in on_victim
        ),
        "refused_after_signal": sum(o.kind == "refused" for o in on_victim),
        "cut_not_accepted": sum(o.kind == "cut" for o in load.outcomes),
    }


def check_clean(load: Load, signalled: float) -> None:
    statuses = [(o.url, o.result) for o in load.outcomes if o.kind == "status"]
    assert statuses == [], f"error answers: {statuses[:5]}"
    early = [o for o in load.outcomes if o.kind in ("refused", "cut") and o.ended < signalled]
    assert early == [], f"failures before the signal: {[o.result for o in early[:5]]}"


async def settle_all(stack: Stack, order_ids: list[int], product_id: int) -> float:
    state, seconds = await wait_settled(
        stack.sandbox.database_url, stack.sandbox.amqp_url, timeout=25
    )
    assert state.pending == 0 and state.unsent_events == 0, state
    assert await stock_violations(stack.sandbox.database_url, {product_id: STOCK}, order_ids) == []
    return seconds


def record(stack: Stack, name: str, figures: dict[str, Any]) -> None:
    print(f"\nSIGTERM {name}: {json.dumps(figures)}")
    with (stack.log_dir / "graceful-stop.jsonl").open("a") as out:
        out.write(json.dumps({"service": name, **figures}) + "\n")


def order_body(product_id: int) -> Callable[[str], dict[str, Any]]:
    return lambda _key: {"product_id": product_id, "total_price": 5}


async def replay_cut_orders(load: Load, live_url: str) -> list[int]:
    """Send each cut order again with its key to a live replica: it must be new there (the
    cut request was never accepted). Returns the ids of the orders so created."""
    created: list[int] = []
    accepted_then_cut: list[str] = []
    async with httpx.AsyncClient(timeout=10) as http:
        for outcome in (o for o in load.outcomes if o.kind == "cut"):
            response = await http.post(
                f"{live_url}/orders", json=outcome.body, headers={"Idempotency-Key": outcome.key}
            )
            assert response.status_code in (200, 201), response.text
            if response.headers.get("Idempotent-Replayed") == "true":
                accepted_then_cut.append(f"{outcome.key}: {outcome.result}")
            created.append(response.json()["id"])
    assert accepted_then_cut == [], f"accepted, yet the client saw: {accepted_then_cut}"
    return created


async def test_sigterm_to_an_order_replica_under_load(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        product = await create_product(http, stack.product_url, "Stop orders", 5, STOCK)
    victim, survivor = stack.orders
    load = Load("/orders", order_body(product["id"]))
    half = CLIENTS // 2
    clients = [[victim.url, survivor.url]] * half + [[survivor.url, victim.url]] * half

    signalled, code, exit_seconds = await stop_under_load(victim, [(load, clients)])

    assert code == 0, victim.tail()
    assert exit_seconds < EXIT_BOUND
    check_clean(load, signalled)
    retried = await replay_cut_orders(load, survivor.url)
    accepted = [o.result for o in load.outcomes if o.kind == "ok"] + retried
    figures = figures_of(load, victim.url, signalled)
    assert figures["in_flight_at_signal_answered"] > 0
    settle_seconds = await settle_all(stack, accepted, product["id"])
    logged = log_events(victim)
    record(
        stack,
        "order-service",
        {
            **figures,
            "exit_code": code,
            "exit_seconds": round(exit_seconds, 3),
            "bound_seconds": EXIT_BOUND,
            "orders_accepted": len(accepted),
            "orders_settled_after_seconds": round(settle_seconds, 2),
            "consumer_held_at_stop": logged["consumer stopped"]["held"],
            "relay_last_round": logged["outbox relay stopped"]["last_round"],
            "messaging_stop_seconds": logged["messaging stopped"]["seconds"],
        },
    )
    victim.start()
    victim.wait_healthy()


async def test_sigterm_to_a_product_replica_under_load(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        product = await create_product(http, stack.product_url, "Stop products", 5, STOCK)
    survivor, victim = stack.products
    orders = Load("/orders", order_body(product["id"]))
    creations = Load("/products", lambda key: {"name": f"stop-{key}", "price": 1, "qty": 1})
    order_urls = [o.url for o in stack.orders]
    half = CLIENTS // 2
    loads = [
        (orders, [order_urls, order_urls[::-1]] * (half // 2)),
        (creations, [[victim.url, survivor.url]] * half),
    ]

    signalled, code, exit_seconds = await stop_under_load(victim, loads)

    assert code == 0, victim.tail()
    assert exit_seconds < EXIT_BOUND
    check_clean(orders, signalled)
    check_clean(creations, signalled)
    assert [o for o in orders.outcomes if o.kind != "ok"] == []  # the order service fails over
    cut = [o.body["name"] for o in creations.outcomes if o.kind == "cut"]
    engine = harness_engine(stack.sandbox.database_url)
    try:
        async with engine.connect() as conn:
            stored = await conn.scalar(
                sa.text("SELECT COUNT(*) FROM products WHERE name IN :names").bindparams(
                    sa.bindparam("names", expanding=True)
                ),
                {"names": cut or ["-"]},
            )
    finally:
        await engine.dispose()
    assert stored == 0, f"{stored} of {len(cut)} products created, yet the client saw an error"
    figures = figures_of(creations, victim.url, signalled)
    assert figures["in_flight_at_signal_answered"] > 0
    accepted = [o.result for o in orders.outcomes if o.kind == "ok"]
    settle_seconds = await settle_all(stack, accepted, product["id"])
    logged = log_events(victim)
    record(
        stack,
        "product-service",
        {
            **figures,
            "order_requests": len(orders.outcomes),
            "exit_code": code,
            "exit_seconds": round(exit_seconds, 3),
            "bound_seconds": EXIT_BOUND,
            "orders_accepted": len(accepted),
            "orders_settled_after_seconds": round(settle_seconds, 2),
            "consumer_held_at_stop": logged["consumer stopped"]["held"],
            "relay_last_round": logged["outbox relay stopped"]["last_round"],
            "messaging_stop_seconds": logged["messaging stopped"]["seconds"],
            "kinds": dict(Counter(o.kind for o in creations.outcomes)),
        },
    )
    victim.start()
    victim.wait_healthy()

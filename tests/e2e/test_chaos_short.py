"""Short, bounded fault-injection runs (the long ones are `make chaos`): on the servers
(MariaDB, and PostgreSQL), every fault kind once (the cache restart from an older snapshot
and the database reset among them), then every invariant of SPEC.md checked from the
databases, the broker and the cache; on the embedded default, `orderstack dev`
stopped by SIGINT and kill -9 in turn under load, then the same invariants checked from
its files."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from harness.cancels import AFTER_CONFIRMED, RIGHT_AFTER_201, CancelResult
from harness.chaos import (
    FAULTS,
    ChaosConfig,
    EmbeddedChaosConfig,
    run_chaos,
    run_embedded_chaos,
)
from harness.checks import CACHE, CANCELS, CLEAN_STOP, FOREIGN_PRODUCTS, LEDGER, SETTLED
from harness.faults import ChaosReport
from harness.invariants import cache_mismatches, harness_engine, wait_cache_consistent
from harness.sandbox import Sandbox
from harness.stack import Stack
from orderstack.cache.port import CachedProduct, cache_key
from orderstack.products.repository import SqlProductRepository

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_invariants_hold_through_kills_and_outages(tmp_path: Path) -> None:
    config = ChaosConfig(
        product_replicas=2,
        order_replicas=2,
        orders=500,
        rate=100,
        products=3,
        stock_ratio=0.2,
        fault_interval=0.5,
        connection_kill_every=1.0,
        outage_seconds=1.0,
        cache_repair_interval=2.0,
        settle_timeout=60,
        log_dir=tmp_path,
        isolated=True,
    )
    report = asyncio.run(run_chaos(config))
    rendered = report.render()
    print(rendered)
    # Beside the other tests of make test's parallel part: the broker gone for its vhost,
    # its tables stalled, never the machine's whole broker or server.
    assert "RabbitMQ outage of the run's vhost" in rendered
    assert "LOCK TABLES products, orders WRITE" in rendered and "FLUSH TABLES" not in rendered
    assert report.violations == []
    assert set(report.faults) == set(FAULTS)  # every kind of fault was really injected
    # The services' MariaDB connections were cut in its turn and during the load as well.
    assert report.connections_killed > 0
    assert report.connection_kill_rounds > config.connection_kill_rounds
    assert {SETTLED, LEDGER, CACHE} <= set(report.checks)  # each check was made
    # Every product (the ordered ones, one deleted and one restocked mid-run) compared.
    assert report.cache_compared == config.products + 2
    assert report.accepted > 0 and report.confirmed > 0 and report.failed > 0
    assert report.confirmed + report.failed + report.cancelled >= report.accepted
    _assert_cancels_exercised(report.cancels, report.cancelled)
    assert CANCELS in report.checks
    _assert_cache_faults_survived(report)


@pytest.mark.slow
def test_invariants_hold_through_kills_and_outages_on_postgresql(tmp_path: Path) -> None:
    """The same scenario on PostgreSQL: its backends terminated (pg_terminate_backend) in
    their turn and during the load, its tables stalled by LOCK TABLE ... ACCESS EXCLUSIVE."""
    config = ChaosConfig(
        product_replicas=2,
        order_replicas=2,
        orders=400,
        rate=100,
        products=3,
        stock_ratio=0.2,
        fault_interval=0.5,
        connection_kill_every=1.0,
        outage_seconds=1.0,
        cache_repair_interval=2.0,
        settle_timeout=60,
        log_dir=tmp_path,
        database="postgresql",
        isolated=True,
    )
    report = asyncio.run(run_chaos(config))
    rendered = report.render()
    print(rendered)
    assert report.violations == []
    assert set(report.faults) == set(FAULTS)
    assert report.connections_killed > 0
    assert report.connection_kill_rounds > config.connection_kill_rounds
    assert "PostgreSQL connections killed" in rendered and "MariaDB" not in rendered
    assert "RabbitMQ outage of the run's vhost" in rendered
    assert "--database postgresql" in report.command
    assert {SETTLED, LEDGER, CACHE} <= set(report.checks)
    assert report.cache_compared == config.products + 2
    assert report.accepted > 0 and report.confirmed > 0 and report.failed > 0
    assert report.confirmed + report.failed + report.cancelled >= report.accepted
    _assert_cancels_exercised(report.cancels, report.cancelled)
    assert CANCELS in report.checks
    _assert_cache_faults_survived(report)


def _assert_cache_faults_survived(report: ChaosReport) -> None:
    """The run's Redis restarted from an older snapshot (seen: another run_id) and a fresh
    product database's service wrote its entries in it (seen: an entry of its epoch); the
    cache still equalled the database once idle, and the run's GET /products/{id} never
    answered the other database's product."""
    assert report.faults["cache_restart"] >= 1 and report.faults["database_reset"] >= 1
    assert report.cache_mismatches == []
    assert report.foreign_checked > 0 and report.foreign_answers == []
    assert report.checks[FOREIGN_PRODUCTS] == []


def _assert_cancels_exercised(cancels: CancelResult, cancelled_in_database: int) -> None:
    """The run's cancels met every case: pending and confirmed orders cancelled (units
    given back), failed ones refused, some cancels duplicated at once."""
    assert cancels.orders > 0 and cancels.duplicated > 0
    assert cancels.when[RIGHT_AFTER_201] > 0 and cancels.when[AFTER_CONFIRMED] > 0
    assert cancels.answers["200"] > 0 and cancels.units_after_confirmed > 0
    assert cancelled_in_database == len(cancels.cancelled)


def test_cache_check_names_stale_entries_and_sees_the_repair(
    make_sandbox: Callable[[str], Sandbox], tmp_path: Path
) -> None:
    """The chaos run's cache check: a stale entry and a live entry over a deleted row are
    reported with their ids; the product service's repair then brings both back."""
    sandbox = make_sandbox("cachecheck")
    asyncio.run(_stale_entries_then_repair(sandbox, tmp_path))


async def _stale_entries_then_repair(sandbox: Sandbox, tmp_path: Path) -> None:
    stack = Stack(
        sandbox,
        tmp_path,
        product_replicas=1,
        order_replicas=0,
        extra_env={"CACHE_REPAIR_INTERVAL_SECONDS": "1"},
    )
    await asyncio.to_thread(stack.start)
    try:
        url = stack.product_url
        async with httpx.AsyncClient(timeout=10) as client:
            kept = (
                await client.post(f"{url}/products", json={"name": "k", "price": 1, "qty": 10})
            ).json()
            gone = (
                await client.post(f"{url}/products", json={"name": "g", "price": 1, "qty": 5})
            ).json()
            adjusted = await client.post(
                f"{url}/products/{kept['id']}/stock-adjustments", json={"delta": -4, "reason": "t"}
            )
            assert adjusted.status_code == 201, adjusted.text
            assert (await client.delete(f"{url}/products/{gone['id']}")).status_code == 204
        compared, mismatches, _ = await wait_cache_consistent(
            sandbox.database_url, sandbox.redis_url, 5
        )
        assert (compared, mismatches) == (2, [])

        # With the service down (nothing repairs), put back what each entry held before its
        # last change, as a write lost to a crash would leave it.
        await asyncio.to_thread(stack.products[0].stop)
        epoch = await _epoch(sandbox)  # entries the service wrote carry its database's
        cache = redis.Redis.from_url(sandbox.redis_url)
        for product_id, name, qty in ((kept["id"], "k", 10), (gone["id"], "g", 5)):
            old = CachedProduct(product_id, 1, name, qty=qty, epoch=epoch)
            cache.set(cache_key(product_id), old.to_json())
        cache.close()
        compared, mismatches = await cache_mismatches(sandbox.database_url, sandbox.redis_url)
        assert mismatches == [
            f"product {kept['id']}: cache has version 1, qty 10, database version 2, qty 6",
            f"product {gone['id']}: cache has version 1, qty 5, database version 2, deleted",
        ]

        await asyncio.to_thread(stack.products[0].start)  # its repair pass heals both
        await asyncio.to_thread(stack.products[0].wait_healthy)
        # A few repair intervals once it answers (beside the other tests' load).
        compared, mismatches, _ = await wait_cache_consistent(
            sandbox.database_url, sandbox.redis_url, 10
        )
        assert mismatches == []
    finally:
        await asyncio.to_thread(stack.stop)


async def _epoch(sandbox: Sandbox) -> str:
    engine = harness_engine(sandbox.database_url)
    try:
        async with engine.connect() as conn:
            return await SqlProductRepository(conn).epoch()
    finally:
        await engine.dispose()


@pytest.fixture
def no_server_variables() -> Iterator[None]:
    """The dev process is started without them anyway; this keeps the harness honest too."""
    saved = {
        k: os.environ.pop(k)
        for k in ("DATABASE_URL", "RABBITMQ_URL", "REDIS_URL")
        if k in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)


# Serial (make test's second part): it times the stops (each within a second of an
# accepted order, the drain within SHUTDOWN_BOUND), which two busy cores would stretch.
@pytest.mark.slow
@pytest.mark.serial
def test_embedded_default_keeps_every_order_through_sigint_and_kill_9(
    tmp_path: Path, no_server_variables: None
) -> None:
    config = EmbeddedChaosConfig(
        kills=4,
        rate=50,
        kill_interval=(1.5, 2.5),
        products=2,
        stock_ratio=0.5,
        cancel_fraction=0.2,
        settle_timeout=20,
        workdir=tmp_path / "work",
        log_dir=tmp_path,
    )
    started = time.monotonic()
    report = asyncio.run(run_embedded_chaos(config))
    print(report.render())
    assert report.violations == []
    assert {SETTLED, LEDGER, CLEAN_STOP} <= set(report.checks)
    assert report.kills == Counter({"SIGINT": 2, "kill -9": 2})
    # Every stop hit orders in flight (observed: this process had accepted orders, the last
    # of them moments before the signal), and the default's own files were used.
    flowing = [(s.accepted_while_up, round(s.last_accept_before_signal, 2)) for s in report.stops]
    assert all(n > 0 and gap < 1.0 for n, gap in flowing), flowing
    assert (tmp_path / "work" / "var" / "orderstack.db").exists()
    assert report.accepted > 0 and report.confirmed > 0 and report.failed > 0
    assert report.pending == 0 and report.stored >= report.accepted
    _assert_cancels_exercised(report.cancels, report.cancelled)
    assert CANCELS in report.checks
    assert time.monotonic() - started < 60

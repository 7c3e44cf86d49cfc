"""Webhook deliveries on MariaDB, PostgreSQL and SQLite (the embedded default's database),
to a real receiver on loopback (aiohttp) that verifies every POST with the procedure
docs/api.md documents (tests/unit/webhook_receiver.py):

- two dispatchers (two replicas) deliver one hook while its receiver is down (its port
  closed), then up: every status change arrives, each webhook-id always with the same
  events, the first sight of each id in event order;
- a hook failing past its (short) retry horizon is dead and paused: nothing more is posted;
  replayed, the same batch comes under the same webhook-id, then the rest;
- throughput: deliveries per second for N status changes (ORDERSTACK_TEST_WEBHOOK_EVENTS,
  default 2000), printed (``-s``) for docs/api.md;
- orders_0013 down (a paused hook keeps its row and cursor; the deliveries table goes) and
  up again (the hook active)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.orders.repository import (
    SqlStatusEventLog,
    SqlWebhookStore,
    order_status_events,
    order_webhook_deliveries,
    order_webhooks,
)
from orderstack.orders.status_events import StatusEventHub
from orderstack.orders.webhooks import DEAD, PAUSED, Webhook, WebhookDispatcher, new_secret
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow
from tests.unit.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("ORDERSTACK_TEST_WEBHOOK_EVENTS", "2000"))


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A SQLite file at head: the embedded default's database."""
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"))
    await migrate.upgrade(engine, "orders")
    yield engine
    await engine.dispose()


async def _fresh(engine: AsyncEngine) -> int:
    """No hooks; the history's last id (kept: a hub would wait out deleted ids as gaps)."""
    async with engine.begin() as conn:
        for table in (order_webhook_deliveries, order_webhooks):
            await conn.execute(table.delete())
    return await SqlStatusEventLog(engine).last_id()


async def _changes(engine: AsyncEngine, n: int, start_order: int = 1) -> list[int]:
    """``n`` status changes, as the order service writes them (one row each)."""
    rows = [
        {"order_id": start_order + i // 2, "status": ("pending", "confirmed")[i % 2],
         "customer_id": None, "at": utcnow()}
        for i in range(n)
    ]  # fmt: skip
    log = SqlStatusEventLog(engine)
    last = await log.last_id()
    async with engine.begin() as conn:
        await conn.execute(order_status_events.insert(), rows)
    return [e.id for e in await log.after(last, limit=n)]


def _dispatcher(
    engine: AsyncEngine, client: httpx.AsyncClient, **kwargs: float
) -> tuple[WebhookDispatcher, StatusEventHub]:
    hub = StatusEventHub(SqlStatusEventLog(engine), poll=0.02)
    options: dict[str, float] = {"poll": 0.05, "timeout": 2.0, **kwargs}
    return WebhookDispatcher(SqlWebhookStore(engine), hub, client, **options), hub  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Hooked:
    receiver: Receiver
    client: httpx.AsyncClient
    store: SqlWebhookStore
    hook: Webhook


@asynccontextmanager
async def _hooked(db: AsyncEngine, status: int | None = None) -> AsyncIterator[_Hooked]:
    """A fresh hook table with one hook to a test receiver (answering ``status``, or its
    own 204), up; the dispatchers' HTTP client; both closed at the end."""
    start = await _fresh(db)
    secret = new_secret()
    receiver = Receiver(secret)
    if status is not None:
        receiver.status = status
    await receiver.up()
    client = httpx.AsyncClient()
    store = SqlWebhookStore(db)
    hook = await store.add(receiver.url, secret, None, start)
    try:
        yield _Hooked(receiver, client, store, hook)
    finally:
        await client.aclose()
        await receiver.down()


async def _settled(store: SqlWebhookStore, after_id: int) -> None:
    """Until the hook's last batch is recorded (the receiver saw it a moment before)."""
    for _ in range(250):
        if (await store.all())[0].after_id == after_id:
            return
        await asyncio.sleep(0.02)


async def _until(check: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)


async def test_every_change_arrives_once_per_id_after_the_receiver_was_down(
    engine: AsyncEngine,
) -> None:
    await _receiver_down_then_up(engine)


async def test_every_change_arrives_once_per_id_after_the_receiver_was_down_on_sqlite(
    sqlite_engine: AsyncEngine,
) -> None:
    await _receiver_down_then_up(sqlite_engine)


async def _receiver_down_then_up(db: AsyncEngine) -> None:
    async with _hooked(db) as hooked:
        receiver, client, store = hooked.receiver, hooked.client, hooked.store
        replicas = [_dispatcher(db, client, batch=7) for _ in range(2)]
        try:
            for dispatcher, _ in replicas:
                dispatcher.start()
            first = await _changes(db, 20)
            await _until(lambda: receiver.delivered() == first, 10)
            await receiver.down()
            second = await _changes(db, 30, start_order=100)
            await asyncio.sleep(1.0)  # refused: retried after 1 s, 2 s … (jittered)
            assert sum(d.posts["failed"] for d, _ in replicas) >= 1
            await receiver.up()
            await _until(lambda: receiver.delivered() == first + second, 15)
            await _settled(store, second[-1])
        finally:
            for dispatcher, hub in replicas:
                await dispatcher.stop()
                await hub.close()
    assert receiver.delivered() == first + second  # each id's events once, in order
    assert receiver.mismatched == 0  # a repeated webhook-id always carried the same batch
    assert receiver.bad_signatures == 0
    [hook] = await store.all()
    assert (hook.after_id, hook.attempts, hook.delivery_upto) == (second[-1], 0, None)


async def test_a_dead_delivery_pauses_its_hook_and_a_replay_resumes_it(engine: AsyncEngine) -> None:
    await _dead_then_replayed(engine)


async def test_a_dead_delivery_pauses_its_hook_and_a_replay_resumes_it_on_sqlite(
    sqlite_engine: AsyncEngine,
) -> None:
    await _dead_then_replayed(sqlite_engine)


async def _dead_then_replayed(db: AsyncEngine) -> None:
    async with _hooked(db, status=500) as hooked:
        receiver, client, store, hook = hooked.receiver, hooked.client, hooked.store, hooked.hook
        dispatcher, hub = _dispatcher(db, client, batch=5, horizon=1.0)
        try:
            dispatcher.start()
            first = await _changes(db, 8)
            await _until(lambda: dispatcher.posts["dead"] == 1, 10)
            [dead] = await store.deliveries(DEAD, 10)
            assert (dead.hook_id, dead.events, dead.last_error) == (hook.id, 5, "HTTP 500")
            assert [h.status for h in await store.all()] == [PAUSED]
            posts = receiver.posts
            receiver.status = 200
            await asyncio.sleep(0.5)
            assert receiver.posts == posts  # paused: nothing posted to a receiver back up
            assert [d.id for d in await store.replay(None)] == [dead.id]
            await _until(lambda: receiver.delivered() == first, 10)
            await _settled(store, first[-1])
        finally:
            await dispatcher.stop()
            await hub.close()
    assert receiver.order == [dead.webhook_id, f"msg_{hook.id}_{first[-1]}"]
    assert receiver.delivered() == first and receiver.mismatched == receiver.bad_signatures == 0
    [resumed] = await store.all()
    assert (resumed.status, resumed.after_id) == ("active", first[-1])


@pytest.mark.parametrize("batch", [100, 1])
async def test_deliveries_per_second(engine: AsyncEngine, batch: int) -> None:
    await _throughput(engine, batch)


@pytest.mark.parametrize("batch", [100, 1])
async def test_deliveries_per_second_on_sqlite(sqlite_engine: AsyncEngine, batch: int) -> None:
    await _throughput(sqlite_engine, batch)


async def _throughput(db: AsyncEngine, batch: int) -> None:
    async with _hooked(db) as hooked:
        receiver, client = hooked.receiver, hooked.client
        n = EVENTS if batch > 1 else max(1, EVENTS // 10)
        dispatcher, hub = _dispatcher(db, client, batch=batch)
        try:
            dispatcher.start()
            await _until(lambda: hub.horizon is not None, 5)
            changes = await _changes(db, n)
            started = time.perf_counter()
            await _until(lambda: len(receiver.delivered()) >= n, 60)
            took = time.perf_counter() - started
        finally:
            await dispatcher.stop()
            await hub.close()
    assert receiver.delivered() == changes
    backend = db.url.get_backend_name()
    print(
        f"\nwebhooks on {backend}, batch {batch}: {n} changes in {took:.2f} s ="
        f" {n / took:.0f} events/s, {receiver.posts / took:.0f} POSTs/s"
    )
    assert took < timedelta(seconds=60).total_seconds()


async def _0013_down_and_up(db: AsyncEngine) -> None:
    async def shape() -> tuple[set[str], set[str]]:
        async with db.connect() as conn:
            return await conn.run_sync(
                lambda c: (
                    set(sa.inspect(c).get_table_names()),
                    {col["name"] for col in sa.inspect(c).get_columns("order_webhooks")},
                )
            )

    start = await _fresh(db)
    store = SqlWebhookStore(db)
    hook = await store.add("http://hooks.test/", new_secret(), None, start)
    await store.begin(hook, start + 3)
    await store.settle(
        hook, after_id=start, attempts=5, next_attempt_at=None, error="HTTP 500",
        delivery_upto=start + 3, status=PAUSED,
    )  # fmt: skip
    await migrate.downgrade(db, "orders", 1)
    try:
        tables, columns = await shape()
        assert "order_webhook_deliveries" not in tables and "order_webhooks" in tables
        assert not {"status", "delivery_upto", "failing_since"} & columns
    finally:
        await migrate.upgrade(db, "orders")
    await migrate.upgrade(db, "orders")  # at head: nothing to do
    [back] = await store.all()
    assert (back.id, back.after_id, back.status, back.delivery_upto) == (
        hook.id, start, "active", None,
    )  # fmt: skip


async def test_orders_0013_goes_down_and_up(engine: AsyncEngine) -> None:
    await _0013_down_and_up(engine)


async def test_orders_0013_goes_down_and_up_on_sqlite(sqlite_engine: AsyncEngine) -> None:
    await _0013_down_and_up(sqlite_engine)

"""The order-status history on the real MariaDB and PostgreSQL (each test on both): each
status change is its ``order_status_events`` row, written in the change's transaction (none
without the change, none before its COMMIT, none for a move that did not happen), also on
the MySQL 8 path where orders get their ids one INSERT at a time; the process's reader
passes ids in order and waits for an id whose transaction is still open; a stream resumes
after an event id from the table on a reader that did not read it; migration orders_0010
down and up, also on SQLite; webhooks: a hook leased to one of concurrent dispatchers, its
outcome recorded once, and every change of its customer's orders posted in order."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.orders.domain import NewOrder, OrderLine, OrderStatus, SettleOrder
from orderstack.orders.events_stream import stream_events
from orderstack.orders.repository import (
    OrderUnitOfWork,
    SqlStatusEventLog,
    SqlWebhookStore,
    order_status_events,
    order_webhooks,
    orders,
)
from orderstack.orders.service import OrderService
from orderstack.orders.status_events import StatusEventHub
from orderstack.orders.webhooks import WebhookDispatcher
from orderstack.storage import migrate
from orderstack.storage.engine import create_engine
from orderstack.storage.types import utcnow
from tests.unit.fakes import FakeCatalog

pytestmark = pytest.mark.integration


def _service(engine: AsyncEngine, *, returning: bool | None = None) -> OrderService:
    return OrderService(
        lambda: OrderUnitOfWork(engine, None, insert_returning=returning), FakeCatalog({1, 2})
    )


async def _history(engine: AsyncEngine, order_ids: list[int]) -> dict[int, list[str]]:
    t = order_status_events
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(t.c.order_id, t.c.status)
                .where(t.c.order_id.in_(order_ids))
                .order_by(t.c.id)
            )
        ).all()
    found: dict[int, list[str]] = {oid: [] for oid in order_ids}
    for row in rows:
        found[row.order_id].append(row.status)
    return found


async def _status(engine: AsyncEngine, order_id: int) -> str:
    async with engine.connect() as conn:
        return str(await conn.scalar(sa.select(orders.c.status).where(orders.c.id == order_id)))


@pytest.mark.parametrize("returning", [None, False], ids=["server", "one_insert_per_order"])
async def test_each_status_change_is_one_event_in_its_transaction(
    engine: AsyncEngine, returning: bool | None
) -> None:
    service = _service(engine, returning=returning)
    placed = await asyncio.gather(
        *(service.create_order(1, Decimal("10"), customer_id=f"c{i % 3}") for i in range(30))
    )
    ids = [order.id for order, _ in placed]
    confirmed, failed = ids[:20], ids[20:]
    async with OrderUnitOfWork(engine, None) as uow:
        await service.settle_orders(
            uow,
            [SettleOrder(i, OrderStatus.CONFIRMED) for i in confirmed]
            + [SettleOrder(i, OrderStatus.FAILED) for i in failed]
            # A second answer for an order settled in this batch moves nothing.
            + [SettleOrder(confirmed[0], OrderStatus.FAILED)],
        )
        await uow.commit()
    # Answers again for settled orders: nothing moves, nothing is recorded.
    async with OrderUnitOfWork(engine, None) as uow:
        await service.settle_orders(uow, [SettleOrder(i, OrderStatus.CONFIRMED) for i in ids])
        await uow.commit()
    await service.cancel_order(confirmed[1])
    await service.cancel_order(confirmed[1])  # cancelled already: no second event
    history = await _history(engine, ids)
    assert history[confirmed[1]] == ["pending", "confirmed", "cancelled"]
    assert all(history[i] == ["pending", "confirmed"] for i in confirmed if i != confirmed[1])
    assert all(history[i] == ["pending", "failed"] for i in failed)
    t = order_status_events
    async with engine.connect() as conn:
        owners = dict(
            (
                await conn.execute(
                    sa.select(t.c.order_id, t.c.customer_id).where(t.c.order_id.in_(ids))
                )
            ).all()
        )
    assert owners == {order.id: order.customer_id for order, _ in placed}


async def test_no_event_without_its_change_nor_before_its_commit(engine: AsyncEngine) -> None:
    service = _service(engine)
    order, _ = await service.create_order(2, Decimal("5"), request_id="sse-key-1")
    history = SqlStatusEventLog(engine)
    before = await history.last_id()
    # A settle left without COMMIT: neither the status nor its event stays.
    async with OrderUnitOfWork(engine, None) as uow:
        await service.settle_orders(uow, [SettleOrder(order.id, OrderStatus.CONFIRMED)])
        # Inside the transaction the event is written, outside it is not seen yet.
        assert [e.status for e in await history.after(before, limit=10)] == []
    assert await _status(engine, order.id) == "pending"
    assert (await _history(engine, [order.id]))[order.id] == ["pending"]
    # A batch that fails (a key used twice in one INSERT) leaves no order and no event.
    async with OrderUnitOfWork(engine, None) as uow:
        twice = NewOrder((OrderLine(1, 1),), None, request_id="sse-key-2")
        with pytest.raises(IntegrityError):
            await uow.orders.add_many([twice, twice], utcnow())
    assert [e.order_id for e in await history.after(before, limit=10)] == []
    async with OrderUnitOfWork(engine, None) as uow:
        await service.settle_orders(uow, [SettleOrder(order.id, OrderStatus.CONFIRMED)])
        await uow.commit()
    assert [(e.order_id, e.status) for e in await history.after(before, limit=10)] == [
        (order.id, "confirmed")
    ]


async def test_the_reader_waits_for_an_id_whose_transaction_is_open(engine: AsyncEngine) -> None:
    service = _service(engine)
    (first, _), (second, _) = [await service.create_order(1, Decimal("1")) for _ in range(2)]
    hub = StatusEventHub(SqlStatusEventLog(engine), poll=3600, gap=30)
    await hub.open()
    start = hub.horizon
    assert start is not None
    slow = OrderUnitOfWork(engine, None)
    async with slow as uow:
        # The slow transaction takes its event id first and commits last.
        await service.settle_orders(uow, [SettleOrder(first.id, OrderStatus.CONFIRMED)])
        await service.cancel_order(second.id)
        await hub.read_once()
        assert hub.horizon == start  # the cancel's event waits behind the open id
        await uow.commit()
    await hub.read_once()
    events, _ = await hub.read(start)
    assert [(e.order_id, e.status) for e in events] == [
        (first.id, "confirmed"),
        (second.id, "cancelled"),
    ]
    assert hub.passed == 0
    await hub.close()


async def test_a_stream_resumes_on_another_reader_after_the_id_it_saw(engine: AsyncEngine) -> None:
    service = _service(engine)
    order, _ = await service.create_order(1, Decimal("1"), customer_id="resumer")
    serving, other = (
        StatusEventHub(SqlStatusEventLog(engine), poll=0.02, memory=2) for _ in range(2)
    )
    stream = stream_events(serving, 0, heartbeat=5, order_id=order.id)
    assert await anext(stream) == b"retry: 1000\n\n"
    pending = await asyncio.wait_for(anext(stream), 5)
    seen = int(pending.split(b"\n")[0][4:])
    await stream.aclose()
    # Meanwhile (no stream open): confirmed, then cancelled.
    async with OrderUnitOfWork(engine, None) as uow:
        await service.settle_orders(uow, [SettleOrder(order.id, OrderStatus.CONFIRMED)])
        await uow.commit()
    await service.cancel_order(order.id)
    resumed = stream_events(other, seen, heartbeat=5, order_id=order.id)
    await anext(resumed)
    got = b""
    while got.count(b"event: status") < 2:
        got += await asyncio.wait_for(anext(resumed), 5)
    assert b'"status":"confirmed"' in got and b'"status":"cancelled"' in got
    assert b'"status":"pending"' not in got
    ids = [int(line[4:]) for line in got.split(b"\n") if line.startswith(b"id: ")]
    assert ids == sorted(ids) and min(ids) > seen
    await resumed.aclose()
    await serving.close()
    await other.close()


async def _down_to_and_up(engine: AsyncEngine) -> None:
    async def revision() -> str | None:
        async with engine.connect() as conn:
            return await conn.scalar(sa.text("SELECT version_num FROM alembic_version_orders"))

    async def tables() -> set[str]:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))

    service = _service(engine)
    order, _ = await service.create_order(1, Decimal("1"))
    for _ in range(10):  # later revisions first
        if await revision() == "orders_0009":
            break
        await migrate.downgrade(engine, "orders", 1)
    assert "order_status_events" not in await tables()
    assert await _status(engine, order.id) == "pending"  # the orders stay
    await migrate.upgrade(engine, "orders")
    await migrate.upgrade(engine, "orders")  # at head: nothing to do
    assert "order_status_events" in await tables()
    await service.cancel_order(order.id)  # its history starts with its next change
    assert (await _history(engine, [order.id]))[order.id] == ["cancelled"]


async def test_orders_0010_goes_down_and_up(engine: AsyncEngine) -> None:
    await _down_to_and_up(engine)


async def test_orders_0010_goes_down_and_up_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(make_url(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"))
    try:
        await migrate.upgrade(engine, "orders")
        await _down_to_and_up(engine)
    finally:
        await engine.dispose()


# -- webhooks -------------------------------------------------------------------------------


async def test_a_webhook_is_leased_to_one_dispatcher_and_settled_once(engine: AsyncEngine) -> None:
    store = SqlWebhookStore(engine)
    async with engine.begin() as conn:
        await conn.execute(order_webhooks.delete())
    hooks = [await store.add(f"http://127.0.0.1:9/{i}", "s" * 20, None, 0) for i in range(6)]
    now = utcnow()
    lease = now + timedelta(seconds=30)
    # Eight replicas claim at once: each hook goes to exactly one of them.
    claims = await asyncio.gather(*(store.claim(now, lease, 10) for _ in range(8)))
    claimed = [hook.id for claim in claims for hook in claim]
    assert sorted(claimed) == [h.id for h in hooks]
    assert await store.claim(now + timedelta(seconds=29), lease, 10) == []
    # An outcome is recorded only against the after_id it was read with.
    first = hooks[0]
    assert await store.settle(first, after_id=5, attempts=0, next_attempt_at=None, error=None)
    stale = await store.settle(first, after_id=3, attempts=0, next_attempt_at=None, error=None)
    assert not stale
    [now_first] = [h for h in await store.all() if h.id == first.id]
    assert now_first.after_id == 5
    assert [h.id for h in await store.claim(now, lease, 10)] == [first.id]  # due again
    assert await store.remove(first.id) and not await store.remove(first.id)


async def test_a_webhook_gets_every_change_in_order_from_the_database(engine: AsyncEngine) -> None:
    got: list[dict[str, object]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        got.extend(json.loads(request.content)["events"])
        return httpx.Response(200)

    store = SqlWebhookStore(engine)
    async with engine.begin() as conn:
        await conn.execute(order_webhooks.delete())
    history = SqlStatusEventLog(engine)
    await store.add("http://hooks.test/", "s" * 20, "hooked", await history.last_id())
    hub = StatusEventHub(history, poll=0.02)
    client = httpx.AsyncClient(transport=httpx.MockTransport(receive))
    dispatcher = WebhookDispatcher(store, hub, client, batch=3)
    service = _service(engine)
    placed = [
        (await service.create_order(1, Decimal(1), customer_id="hooked"))[0] for _ in range(4)
    ]
    await service.create_order(1, Decimal(1), customer_id="someone else")
    async with OrderUnitOfWork(engine, None) as uow:
        await service.settle_orders(uow, [SettleOrder(o.id, OrderStatus.CONFIRMED) for o in placed])
        await uow.commit()
    for _ in range(200):
        await dispatcher.run_once()
        if len(got) >= 8:
            break
        await asyncio.sleep(0.02)
    await dispatcher.stop()
    await hub.close()
    ids = [e["id"] for e in got]
    assert ids == sorted(set(ids))
    assert sorted((e["order_id"], e["status"]) for e in got) == sorted(
        (o.id, s) for o in placed for s in ("pending", "confirmed")
    )

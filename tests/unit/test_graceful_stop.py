"""The stop path of a service's messaging (SIGTERM): the consumer stops taking deliveries
and settles what it holds, the relay finishes its round and publishes once more; each
within a bound, after which what was cut off is redelivered or stays unsent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.envelope import Event
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.outbox import OutboxRelay, OutboxWriter, outbox_table
from orderstack.messaging.runtime import MessagingRuntime
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService
from orderstack.serving import _server
from orderstack.storage.engine import create_engine
from tests.unit.fakes import FakeProductDatabase


def order_created(order_id: int, product_id: int) -> Event:
    return Event("order.created", {"orderId": order_id, "productId": product_id})


def answered(db: FakeProductDatabase) -> list[int]:
    return sorted(e.data["orderId"] for e in db.outbox.events if e.name.startswith("order.qty"))


class GatedHandler:
    """The stock handler, except that each batch waits at a gate: before it is applied, or
    with ``after_apply`` once it has been applied in its unit of work (not yet committed:
    a stop that cut it short and committed anyway would show)."""

    def __init__(self, inner: OrderStockHandler, *, after_apply: bool = False) -> None:
        self._inner = inner
        self.after_apply = after_apply
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.batches: list[int] = []

    def validate(self, event: Event) -> Any:
        return self._inner.validate(event)

    async def apply(self, uow: Any, commands: Sequence[Any]) -> None:
        self.batches.append(len(commands))
        if self.after_apply:
            await self._inner.apply(uow, commands)
        self.entered.set()
        await self.gate.wait()
        if not self.after_apply:
            await self._inner.apply(uow, commands)


async def wait_for(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.fixture
async def product_id(product_service: ProductService) -> int:
    return (await product_service.create_product("Phone", Decimal(500), 1000)).id


@pytest.fixture
async def bus() -> AsyncIterator[InProcessBus]:
    bus = InProcessBus()
    await bus.start()
    yield bus
    await bus.close()


async def test_consumer_stop_settles_the_batch_in_hand_and_what_it_holds_then_takes_no_more(
    bus: InProcessBus,
    product_db: FakeProductDatabase,
    product_service: ProductService,
    product_id: int,
) -> None:
    handler = GatedHandler(OrderStockHandler(product_service))
    consumer = EventConsumer(
        bus, PRODUCT_SERVICE_QUEUE, product_db.unit_of_work, handler, prefetch=20, batch_size=5
    )
    await consumer.start()
    await bus.publish([order_created(i, product_id) for i in range(1, 13)])
    await handler.entered.wait()  # the first batch is being applied; the rest are held
    await wait_for(lambda: consumer._pending.qsize() == 7)

    stopping = asyncio.create_task(consumer.stop(timeout=5))
    await asyncio.sleep(0.05)
    await bus.publish([order_created(i, product_id) for i in range(13, 16)])  # after the cancel
    assert not stopping.done()  # the batch in hand is not cut short
    handler.gate.set()
    await stopping

    assert answered(product_db) == list(range(1, 13))  # committed: batch in hand and held
    assert handler.batches == [5, 5, 2]
    assert await bus.depth(PRODUCT_SERVICE_QUEUE.name) == 3  # left for the next consumer
    await asyncio.sleep(0.05)
    assert answered(product_db) == list(range(1, 13))


async def test_consumer_stop_gives_up_on_a_stuck_batch_after_its_timeout(
    bus: InProcessBus,
    product_db: FakeProductDatabase,
    product_service: ProductService,
    product_id: int,
) -> None:
    # The batch is applied in its unit of work, then stuck before the commit (the gate
    # never opens): the stop must roll it back, not commit what was cut short.
    handler = GatedHandler(OrderStockHandler(product_service), after_apply=True)
    consumer = EventConsumer(bus, PRODUCT_SERVICE_QUEUE, product_db.unit_of_work, handler)
    await consumer.start()
    await bus.publish([order_created(1, product_id)])
    await handler.entered.wait()
    stock_before = (await product_service.get_product(product_id)).qty

    started = time.monotonic()
    await consumer.stop(timeout=0.3)

    assert time.monotonic() - started < 1.0
    assert answered(product_db) == []  # rolled back: no answer written
    assert not product_db.inbox.seen  # nor the event let in
    assert (await product_service.get_product(product_id)).qty == stock_before == 1000
    # Not acked: the next consumer gets it, and it is applied once.
    after = EventConsumer(
        bus, PRODUCT_SERVICE_QUEUE, product_db.unit_of_work, OrderStockHandler(product_service)
    )
    await after.start()
    try:
        await wait_for(lambda: answered(product_db) == [1])
    finally:
        await after.stop(timeout=2)
    assert (await product_service.get_product(product_id)).qty == 999


# -- the relay -------------------------------------------------------------------------


class RecordingBus:
    """The bus port's publishing side; a publish can be made to wait at a gate."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def is_up(self) -> bool:
        return True

    async def publish(self, events: Sequence[Event]) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.published.extend(e.id for e in events)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, sa.Table]]:
    engine = create_engine(sa.engine.make_url(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}"))
    table = outbox_table(sa.MetaData(), "test")
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    yield engine, table
    await engine.dispose()


async def write(engine: AsyncEngine, table: sa.Table, count: int) -> list[Event]:
    events = [Event("order.created", {"orderId": i, "productId": 1}) for i in range(count)]
    async with engine.begin() as conn:
        await OutboxWriter(conn, table).add(events)
    return events


async def unsent(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).select_from(table).where(table.c.published_at.is_(None))
        )
    return int(count or 0)


async def test_relay_stop_publishes_once_more_what_was_committed(
    outbox: tuple[AsyncEngine, sa.Table],
) -> None:
    engine, table = outbox
    bus = RecordingBus()
    relay = OutboxRelay(engine, table, bus, batch_size=4, poll_interval=60)  # type: ignore[arg-type]
    relay.start()
    await asyncio.sleep(0.05)  # the workers' first rounds found nothing; they wait
    events = await write(engine, table, 10)  # committed, nobody woke the relay

    await relay.stop(timeout=2)

    assert sorted(bus.published) == sorted(e.id for e in events)  # 4 + 4 + 2
    assert await unsent(engine, table) == 0


async def test_relay_stop_lets_the_round_in_progress_finish(
    outbox: tuple[AsyncEngine, sa.Table],
) -> None:
    engine, table = outbox
    bus = RecordingBus()
    bus.gate = asyncio.Event()
    relay = OutboxRelay(engine, table, bus, batch_size=100, poll_interval=60, workers=2)  # type: ignore[arg-type]
    relay.start()
    events = await write(engine, table, 3)
    relay.notify()
    await bus.entered.wait()  # a round holds the rows, waiting for the broker's confirms

    stopping = asyncio.create_task(relay.stop(timeout=2))
    await asyncio.sleep(0.05)
    assert not stopping.done()
    bus.gate.set()
    await stopping

    assert sorted(bus.published) == sorted(e.id for e in events)
    assert await unsent(engine, table) == 0


async def test_relay_stop_is_bounded_and_leaves_a_cut_round_unsent(
    outbox: tuple[AsyncEngine, sa.Table],
) -> None:
    engine, table = outbox
    bus = RecordingBus()
    bus.gate = asyncio.Event()  # the broker never confirms
    relay = OutboxRelay(engine, table, bus, poll_interval=60)  # type: ignore[arg-type]
    relay.start()
    await write(engine, table, 3)
    relay.notify()
    await bus.entered.wait()

    started = time.monotonic()
    await relay.stop(timeout=0.3)

    assert time.monotonic() - started < 1.0
    assert bus.published == []
    assert await unsent(engine, table) == 3  # rolled back: the next relay sends them


async def test_runtime_stop_drains_the_consumer_before_the_last_relay_round(
    bus: InProcessBus,
    product_db: FakeProductDatabase,
    product_service: ProductService,
    product_id: int,
    outbox: tuple[AsyncEngine, sa.Table],
) -> None:
    engine, table = outbox
    order: list[str] = []
    handler = GatedHandler(OrderStockHandler(product_service))
    consumer = EventConsumer(bus, PRODUCT_SERVICE_QUEUE, product_db.unit_of_work, handler)
    recording = RecordingBus()
    relay = OutboxRelay(engine, table, recording, poll_interval=60)  # type: ignore[arg-type]
    original_consumer_stop, original_relay_stop = consumer.stop, relay.stop

    async def consumer_stop(timeout: float | None = None) -> None:
        await original_consumer_stop(timeout)
        order.append("consumer")

    async def relay_stop(timeout: float | None = None, *, final_round: bool = True) -> None:
        order.append("relay")
        await original_relay_stop(timeout, final_round=final_round)

    consumer.stop = consumer_stop  # type: ignore[method-assign]
    relay.stop = relay_stop  # type: ignore[method-assign]
    runtime = MessagingRuntime(bus, relay, consumer, drain_timeout=3)
    await runtime.start()
    await wait_for(lambda: consumer._task is not None)
    await bus.publish([order_created(1, product_id)])
    await handler.entered.wait()
    handler.gate.set()

    await runtime.stop()

    assert order == ["consumer", "relay"]
    assert answered(product_db) == [1]


def test_a_fractional_grace_is_kept() -> None:
    # SHUTDOWN_GRACE_SECONDS is a float: 1.4 s is 1.4 s of grace, not a rounded 1.
    server = _server(FastAPI(), "127.0.0.1", 0, 1.4, lambda: None)
    assert server.config.timeout_graceful_shutdown == 1.4

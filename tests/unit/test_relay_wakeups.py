"""The outbox relay's wake-ups: a commit wakes one idle worker, not all of them (a second
one woken for the same rows finds them locked and opens a transaction for nothing), and a
commit that lands while every worker is in a round is relayed right after it, not at the
next poll."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from orderstack.messaging.outbox import OutboxRelay, outbox_table
from orderstack.storage.engine import create_engine
from tests.unit.test_graceful_stop import RecordingBus, unsent, write


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine, sa.Table]]:
    """The relay's engine and the writers' (so that only the relay's transactions are
    counted), on one SQLite file."""
    url = sa.engine.make_url(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    relay_engine, writer_engine = create_engine(url), create_engine(url)
    table = outbox_table(sa.MetaData(), "test")
    async with writer_engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    yield relay_engine, writer_engine, table
    await relay_engine.dispose()
    await writer_engine.dispose()


async def until(check: object, seconds: float = 10.0) -> None:
    """Wait for ``check`` (seconds: room for a busy machine, far below the 60 s poll)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.005)


class Transactions:
    """The transactions begun on an engine so far."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        sa.event.listen(engine.sync_engine, "begin", self._begun)

    def _begun(self, conn: object) -> None:
        self.count += 1


@contextlib.asynccontextmanager
async def idle_workers(
    relay_engine: AsyncEngine, table: sa.Table, bus: RecordingBus
) -> AsyncIterator[tuple[OutboxRelay, Transactions]]:
    """A relay of three workers, each past its first round (nothing to send) and idle, and
    the count of its transactions; stopped on the way out."""
    transactions = Transactions(relay_engine)
    relay = OutboxRelay(relay_engine, table, bus, poll_interval=60, workers=3)  # type: ignore[arg-type]
    relay.start()
    try:
        await until(lambda: transactions.count == 3)
        await asyncio.sleep(0.05)
        yield relay, transactions
    finally:
        await relay.stop(timeout=2)


async def test_a_commit_wakes_one_worker_of_several(
    engines: tuple[AsyncEngine, AsyncEngine, sa.Table],
) -> None:
    relay_engine, writer_engine, table = engines
    bus = RecordingBus()
    async with idle_workers(relay_engine, table, bus) as (relay, transactions):
        for round_ in range(1, 4):
            events = await write(writer_engine, table, 5)
            relay.notify()
            await until(lambda n=5 * round_: len(bus.published) == n)
            await asyncio.sleep(0.05)  # a second worker woken would have begun by now
            assert transactions.count == 3 + round_
            assert set(bus.published[-5:]) == {e.id for e in events}


async def test_a_commit_during_every_workers_round_is_relayed_right_after_it(
    engines: tuple[AsyncEngine, AsyncEngine, sa.Table],
) -> None:
    relay_engine, writer_engine, table = engines
    bus = RecordingBus()
    bus.gate = asyncio.Event()
    relay = OutboxRelay(relay_engine, table, bus, poll_interval=60, workers=1)  # type: ignore[arg-type]
    relay.start()
    try:
        first = await write(writer_engine, table, 3)
        relay.notify()
        await bus.entered.wait()  # the one worker is in its round, waiting for confirms
        later = await write(writer_engine, table, 2)
        relay.notify()  # no worker idle: the round owes another
        bus.gate.set()
        await until(lambda: len(bus.published) == 5)  # not the 60 s poll
        assert sorted(bus.published) == sorted(e.id for e in [*first, *later])
        # The round marks its rows sent once the broker confirmed them, a moment after the
        # publish: wait for that commit (on a busy machine a read at once found 2 unsent).
        deadline = asyncio.get_running_loop().time() + 10
        while (left := await unsent(writer_engine, table)) != 0:
            assert asyncio.get_running_loop().time() < deadline, f"{left} rows never marked sent"
            await asyncio.sleep(0.01)
    finally:
        await relay.stop(timeout=2)


class HeldBeforeSelectBus(RecordingBus):
    """A bus whose ``is_up`` (asked before a round's SELECT) can hold the round there."""

    def __init__(self) -> None:
        super().__init__()
        self.up_gate: asyncio.Event | None = None
        self.held = asyncio.Event()

    async def is_up(self) -> bool:
        if self.up_gate is not None:
            self.held.set()
            await self.up_gate.wait()
        return True


async def test_commits_before_the_woken_workers_select_wake_no_other_worker(
    engines: tuple[AsyncEngine, AsyncEngine, sa.Table],
) -> None:
    """A worker woken and not yet at its SELECT will see the rows of later commits: at low
    rates a second worker woken for them found them taken, an empty transaction each."""
    relay_engine, writer_engine, table = engines
    bus = HeldBeforeSelectBus()
    async with idle_workers(relay_engine, table, bus) as (relay, transactions):
        bus.up_gate = asyncio.Event()
        written = await write(writer_engine, table, 2)
        relay.notify()
        await bus.held.wait()  # woken, held before its SELECT
        for _ in range(3):
            written += await write(writer_engine, table, 2)
            relay.notify()
        await asyncio.sleep(0.05)  # a worker woken by these would have asked by now
        bus.up_gate.set()
        await until(lambda: len(bus.published) == 8)
        await asyncio.sleep(0.05)
        assert transactions.count == 3 + 1  # one round took all four commits' rows
        assert sorted(bus.published) == sorted(e.id for e in written)

        bus.up_gate = None  # a commit after that SELECT wakes a worker again
        later = await write(writer_engine, table, 2)
        relay.notify()
        await until(lambda: len(bus.published) == 10)
        assert set(bus.published[-2:]) == {e.id for e in later}

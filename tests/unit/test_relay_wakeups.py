"""The outbox relay's wake-ups: a commit wakes one idle worker, not all of them (a second
one woken for the same rows finds them locked and opens a transaction for nothing), and a
commit that lands while every worker is in a round is relayed right after it, not at the
next poll."""

from __future__ import annotations

import asyncio
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


async def test_a_commit_wakes_one_worker_of_several(
    engines: tuple[AsyncEngine, AsyncEngine, sa.Table],
) -> None:
    relay_engine, writer_engine, table = engines
    transactions = 0

    def count(conn: object) -> None:
        nonlocal transactions
        transactions += 1

    sa.event.listen(relay_engine.sync_engine, "begin", count)
    bus = RecordingBus()
    relay = OutboxRelay(relay_engine, table, bus, poll_interval=60, workers=3)  # type: ignore[arg-type]
    relay.start()
    try:
        await until(lambda: transactions == 3)  # each worker's first round: nothing to send
        await asyncio.sleep(0.05)
        for round_ in range(1, 4):
            events = await write(writer_engine, table, 5)
            relay.notify()
            await until(lambda n=5 * round_: len(bus.published) == n)
            await asyncio.sleep(0.05)  # a second worker woken would have begun by now
            assert transactions == 3 + round_
            assert set(bus.published[-5:]) == {e.id for e in events}
    finally:
        await relay.stop(timeout=2)


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
    transactions = 0

    def count(conn: object) -> None:
        nonlocal transactions
        transactions += 1

    sa.event.listen(relay_engine.sync_engine, "begin", count)
    bus = HeldBeforeSelectBus()
    relay = OutboxRelay(relay_engine, table, bus, poll_interval=60, workers=3)  # type: ignore[arg-type]
    relay.start()
    try:
        await until(lambda: transactions == 3)  # each worker's first round: nothing to send
        await asyncio.sleep(0.05)
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
        assert transactions == 3 + 1  # one round took all four commits' rows
        assert sorted(bus.published) == sorted(e.id for e in written)

        bus.up_gate = None  # a commit after that SELECT wakes a worker again
        later = await write(writer_engine, table, 2)
        relay.notify()
        await until(lambda: len(bus.published) == 10)
        assert set(bus.published[-2:]) == {e.id for e in later}
    finally:
        await relay.stop(timeout=2)

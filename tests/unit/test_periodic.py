"""The periodic task every background loop runs on: rounds every interval, failures logged."""

from __future__ import annotations

import asyncio

import pytest

from orderstack.periodic import PeriodicTask


class Rounds:
    def __init__(self, failures: int = 0) -> None:
        self.count, self.failures = 0, failures
        self.ran = asyncio.Event()

    async def __call__(self) -> None:
        self.count += 1
        self.ran.set()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database gone")


async def wait_for(rounds: Rounds, count: int) -> None:
    async with asyncio.timeout(2.0):
        while rounds.count < count:
            rounds.ran.clear()
            await rounds.ran.wait()


async def test_a_failed_round_is_logged_and_the_next_one_runs() -> None:
    rounds = Rounds(failures=2)
    task = PeriodicTask("test", rounds, 0.01)

    task.start()
    try:
        await wait_for(rounds, 4)
    finally:
        await task.stop()

    assert rounds.failures == 0


async def test_the_first_round_waits_an_interval_unless_run_at_start() -> None:
    waiting, eager = Rounds(), Rounds()
    tasks = [
        PeriodicTask("waits", waiting, 60),
        PeriodicTask("eager", eager, 60, run_at_start=True),
    ]

    for task in tasks:
        task.start()
    await asyncio.sleep(0.05)
    for task in tasks:
        await task.stop()

    assert (waiting.count, eager.count) == (0, 1)


async def test_stop_ends_the_rounds_and_can_be_called_twice() -> None:
    rounds = Rounds()
    task = PeriodicTask("test", rounds, 0.01, jitter=0.5)
    task.start()
    task.start()  # already running: nothing more
    await wait_for(rounds, 2)

    await task.stop()
    await task.stop()
    stopped_at = rounds.count
    await asyncio.sleep(0.05)

    assert rounds.count == stopped_at


def test_jitter_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        PeriodicTask("test", Rounds(), 1.0, jitter=1.5)

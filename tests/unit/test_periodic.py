"""The periodic task every background loop runs on: rounds every interval, failures logged."""

from __future__ import annotations

import asyncio

import pytest

from orderstack.periodic import PeriodicTask, cancel_and_wait


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


async def _swallowing_cancels(times: int, ended: asyncio.Event) -> str:
    """A loop whose work turns a cancel into an error it retries on (a database driver
    interrupted mid-query does): it survives ``times`` cancels."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if times == 0:
                ended.set()
                raise
            times -= 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def test_a_task_that_swallows_cancels_is_cancelled_until_it_ends() -> None:
    ended = asyncio.Event()
    task = asyncio.create_task(_swallowing_cancels(3, ended))
    await asyncio.sleep(0)

    async with asyncio.timeout(5.0):
        await cancel_and_wait(task, None)

    assert ended.is_set()
    assert task.cancelled()


async def test_one_cancel_and_a_wait_would_have_waited_for_ever() -> None:
    """The counterpart: the plain cancel-then-gather a stop used before never returns."""
    task = asyncio.create_task(_swallowing_cancels(1, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()

    done, _ = await asyncio.wait({task}, timeout=0.3)

    assert not done
    await cancel_and_wait(task)


async def test_a_periodic_task_whose_round_swallows_its_cancel_still_stops() -> None:
    ended = asyncio.Event()

    async def round_swallowing_one_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not ended.is_set():
                ended.set()
                raise ConnectionError("lost connection mid-query") from None
            raise

    task = PeriodicTask("test", round_swallowing_one_cancel, 0.01, run_at_start=True)
    task.start()
    await asyncio.sleep(0.05)

    async with asyncio.timeout(5.0):
        await task.stop()

    assert ended.is_set()


async def test_what_a_cancelled_task_raised_is_retrieved_not_re_raised() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)

    await cancel_and_wait(task)

    assert isinstance(task.exception(), ValueError)


async def test_a_round_that_turns_its_cancel_into_an_error_ends_on_one_cancel() -> None:
    """asyncio.Runner cancels what is left once, and waits: the periodic loop must not
    take the error that replaced the cancel for a failed round."""
    entered = asyncio.Event()

    async def round_replacing_its_cancel() -> None:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionError("lost connection mid-query") from None

    periodic = PeriodicTask("test", round_replacing_its_cancel, 0.01, run_at_start=True)
    periodic.start()
    await entered.wait()
    task = periodic._task
    assert task is not None
    task.cancel()

    done, _ = await asyncio.wait({task}, timeout=2.0)

    assert done and task.cancelled()

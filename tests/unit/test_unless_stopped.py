"""A stop during start-up ends the start-up step even when the step loses a cancel (Python
3.11's asyncio.wait_for drops one that lands as its inner call completes: the migrations'
retry loop then went on retrying, and a stop signal took the watchdog's 15 s)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from orderstack.serving import stop_requested, unless_stopped


async def test_a_step_that_swallows_a_cancel_is_cancelled_again_until_it_ends() -> None:
    app = FastAPI()
    attempts = 0
    swallowed = 0

    async def retry_loop() -> None:
        nonlocal attempts, swallowed
        while True:
            attempts += 1
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed < 3:  # as a lost cancel: the loop goes on
                    swallowed += 1
                    continue
                raise

    async def stop_soon() -> None:
        await asyncio.sleep(0.05)
        stop_requested(app).set()

    stopper = asyncio.create_task(stop_soon())
    finished = await asyncio.wait_for(unless_stopped(app, retry_loop()), timeout=5)
    await stopper

    assert finished is False
    assert swallowed == 3  # each lost cancel was followed by another


async def test_a_step_that_finishes_first_is_reported_done() -> None:
    app = FastAPI()

    async def quick() -> None:
        await asyncio.sleep(0)

    assert await unless_stopped(app, quick()) is True

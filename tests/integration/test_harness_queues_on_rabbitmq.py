"""The harness reads the topology's queue depths only once every queue exists: a service
answers HTTP before its consumers have declared their queues, and a bench step that ended
that early once failed reading a queue not there yet."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import pytest

from harness.invariants import QUEUE_NAMES, ready_depths, wait_declared
from harness.sandbox import Sandbox

pytestmark = pytest.mark.integration


async def _declare_after(amqp_url: str, seconds: float) -> None:
    await asyncio.sleep(seconds)
    connection = await aio_pika.connect(amqp_url, timeout=5)
    try:
        channel = await connection.channel()
        for name in QUEUE_NAMES:
            await channel.declare_queue(name, auto_delete=False)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def sandbox(make_sandbox: Callable[[str], Sandbox]) -> Sandbox:
    return make_sandbox("queues")


async def test_waiting_for_the_queues_ends_once_each_exists(sandbox: Sandbox) -> None:
    with pytest.raises(TimeoutError, match="not declared"):
        await wait_declared(sandbox.amqp_url, timeout=0.3)

    declaring = asyncio.create_task(_declare_after(sandbox.amqp_url, 0.5))
    await wait_declared(sandbox.amqp_url, timeout=30)
    await declaring

    assert await ready_depths(sandbox.amqp_url) == dict.fromkeys(QUEUE_NAMES, 0)

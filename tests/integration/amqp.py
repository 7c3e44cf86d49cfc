"""What the RabbitMQ integration tests do as a plain AMQP client: take every message of a
queue, and wait for a condition on the broker; and the bus they test, started on a
sandbox's vhost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika

from orderstack.messaging.rabbitmq import RabbitMQBus


async def take_all(amqp_url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take (and ack) every message now in ``queue``, as a plain AMQP client would."""
    connection = await aio_pika.connect(amqp_url)
    taken = []
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        while (message := await q.get(fail=False)) is not None:
            await message.ack()
            taken.append(message)
    finally:
        await connection.close()
    return taken


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 15) -> None:
    """Wait until ``condition`` holds; TimeoutError after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def started_bus(amqp_url: str, *emptied: str) -> AsyncIterator[RabbitMQBus]:
    """A started RabbitMQBus on ``amqp_url`` (its topology declared), the queues
    ``emptied`` emptied before it is handed over; closed on the way out."""
    bus = RabbitMQBus(amqp_url)
    await bus.start()
    try:
        for queue in emptied:
            await take_all(amqp_url, queue)
        yield bus
    finally:
        await bus.close()

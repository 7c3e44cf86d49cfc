"""In-process adapter of the bus port, for both services in one process (embedded default).

It follows the broker's semantics closely enough that the same consumer code runs on it:
topic routing to durable-for-the-process queues, encoded bodies, ack / requeue / dead-letter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from orderstack.messaging.bus import OnDelivery, PublishError
from orderstack.messaging.envelope import Event, encode
from orderstack.messaging.topology import ALL_QUEUES, QueueSpec


class _Message:
    __slots__ = ("body", "message_id", "routing_key")

    def __init__(self, body: bytes, message_id: str | None, routing_key: str) -> None:
        self.body = body
        self.message_id = message_id
        self.routing_key = routing_key


class _LocalDelivery:
    __slots__ = ("_bus", "_queue", "_message", "_settled", "body", "message_id", "routing_key")

    def __init__(self, bus: InProcessBus, queue: str, message: _Message) -> None:
        self._bus, self._queue, self._message = bus, queue, message
        self._settled = False
        self.body, self.message_id = message.body, message.message_id
        self.routing_key: str | None = message.routing_key

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError("delivery already settled")
        self._settled = True
        self._bus._in_flight[self._queue].release()

    async def ack(self) -> None:
        self._settle()

    async def dead_letter(self) -> None:
        self._settle()
        self._bus.dead_letters[self._queue].append(self._message)

    async def requeue(self) -> None:
        self._settle()
        self._bus._queues[self._queue].put_nowait(self._message)


class InProcessBus:
    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[_Message]] = {}
        self._in_flight: dict[str, asyncio.Semaphore] = {}
        self.dead_letters: dict[str, list[_Message]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    async def start(self) -> None:
        for spec in ALL_QUEUES:
            self._queues.setdefault(spec.name, asyncio.Queue())
            self.dead_letters.setdefault(spec.name, [])
        self._started = True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._started = False

    async def publish(self, events: Sequence[Event]) -> None:
        if not self._started:
            raise PublishError("bus not started")
        for event in events:  # an event no queue is bound to is a broadcast nobody hears
            for spec in ALL_QUEUES:
                if event.name in spec.routing_keys:
                    self._queues[spec.name].put_nowait(
                        _Message(encode(event), event.id, event.name)
                    )

    async def publish_raw(self, queue: str, body: bytes, message_id: str | None, key: str) -> None:
        """Put an arbitrary message on a queue (tests use it for malformed input)."""
        self._queues[queue].put_nowait(_Message(body, message_id, key))

    async def consume(self, queue: QueueSpec, on_delivery: OnDelivery, prefetch: int) -> None:
        self._in_flight[queue.name] = asyncio.Semaphore(prefetch)
        self._tasks.append(asyncio.create_task(self._pump(queue.name, on_delivery)))

    async def _pump(self, queue: str, on_delivery: OnDelivery) -> None:
        source, window = self._queues[queue], self._in_flight[queue]
        while True:
            await window.acquire()
            message = await source.get()
            await on_delivery(_LocalDelivery(self, queue, message))

    async def is_up(self) -> bool:
        return self._started

    def depth(self, queue: str) -> int:
        """Messages waiting in a queue (not yet handed to its consumer)."""
        return self._queues[queue].qsize()

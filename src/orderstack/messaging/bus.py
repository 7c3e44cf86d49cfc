"""The bus port: publish confirmed batches, deliver messages to a consumer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from orderstack.messaging.envelope import Event
from orderstack.messaging.topology import QueueSpec


class PublishError(Exception):
    """The broker did not confirm every event of a batch; the caller keeps them for later."""


class Delivery(Protocol):
    """One message handed to a consumer. Exactly one of the settle methods is called."""

    body: bytes
    message_id: str | None
    routing_key: str | None

    async def ack(self) -> None: ...

    async def dead_letter(self) -> None:
        """Reject without requeue: the message moves to the queue's dead-letter queue."""

    async def requeue(self) -> None:
        """Give the message back for a later attempt (this or another replica)."""


OnDelivery = Callable[[Delivery], Awaitable[None]]


class Bus(Protocol):
    async def start(self) -> None:
        """Connect and declare the topology; raise if the broker cannot be reached."""

    async def close(self) -> None: ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish persistently; return once the broker confirmed all, else raise PublishError."""

    async def consume(self, queue: QueueSpec, on_delivery: OnDelivery, prefetch: int) -> None:
        """Start delivering the queue's messages to on_delivery (returns once subscribed)."""

    async def is_up(self) -> bool: ...


@dataclass(frozen=True)
class DeadLetter:
    """A message its consumer gave up on, as kept in the dead-letter queue."""

    queue: str  # the consuming queue it came from, e.g. "product-service.events"
    message_id: str | None
    routing_key: str | None
    body: bytes
    reason: str | None


@runtime_checkable
class DeadLetterAdmin(Protocol):
    async def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        """Oldest first; leaves them in place."""

    async def replay(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Put them back on their queue with their message ids (None: all); return how many."""

    async def purge(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Drop them (None: all); return how many."""

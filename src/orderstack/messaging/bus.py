"""The bus port: publish confirmed batches, deliver messages to a consumer; and the
dead-letter admin port, to inspect and re-drive what the consumers dead-lettered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from orderstack.messaging.envelope import Event
from orderstack.messaging.topology import QueueSpec
from orderstack.messaging.trust import PublisherTrust


class PublishError(Exception):
    """The broker did not confirm every event of a batch; the caller keeps them for later."""


class Delivery(Protocol):
    """One message handed to a consumer. Exactly one of the settle methods is called."""

    body: bytes
    message_id: str | None
    routing_key: str | None
    # The message's headers (``x-request-id``, ``traceparent``: messaging/envelope.py).
    headers: Mapping[str, Any] | None
    # Who published it, as the transport vouches: the AMQP ``user_id``, which RabbitMQ
    # checks against the publishing connection's user (None: the message carries none).
    # The consumer believes an event only from its publisher's user (messaging/trust.py).
    user_id: str | None

    async def ack(self) -> None: ...

    async def dead_letter(self, reason: str) -> None:
        """Move the message to the queue's dead-letter queue, recording ``reason`` with it
        (why it cannot be processed), so that an operator can decide to replay or purge it."""


OnDelivery = Callable[[Delivery], Awaitable[None]]


async def ack_each(deliveries: Sequence[Delivery]) -> None:
    """Ack the deliveries one by one, each tried; then raise the first failure, if any."""
    failure: Exception | None = None
    for delivery in deliveries:
        try:
            await delivery.ack()
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


class Bus(Protocol):
    # Each service's user on this bus: whose deliveries' ``user_id`` the consumer believes
    # for which events (messaging/trust.py).
    trust: PublisherTrust

    async def start(self) -> None:
        """Connect and declare the topology; raise if the broker cannot be reached."""

    async def close(self) -> None: ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Publish persistently; return once the broker confirmed all, else raise PublishError."""

    async def consume(self, queue: QueueSpec, on_delivery: OnDelivery, prefetch: int) -> None:
        """Start delivering the queue's messages to on_delivery (returns once subscribed)."""

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Ack each of these deliveries (handed out by this bus, none settled yet), as
        cheaply as the broker allows. One that cannot be acked (its channel is gone: the
        broker gives it out again) does not stop the others; the first such failure is
        raised once all were tried. ``ack_each`` does it one by one."""

    async def stop_consuming(self, queue: QueueSpec) -> None:
        """Stop delivering the queue's messages (returns once no more will come; a no-op
        when not consuming). Deliveries already handed out can still be settled."""

    async def is_up(self) -> bool: ...


@dataclass(frozen=True)
class DeadLetter:
    """A message in a consuming queue's dead-letter queue."""

    queue: str  # the consuming queue it came from, e.g. "product-service.events"
    message_id: str | None
    routing_key: str | None  # the one it was published with (the event name)
    body: bytes
    reason: str | None  # None when it was dead-lettered without one (e.g. by the broker)
    # The broker user that published the original (its ``user_id``), when it carried one.
    # Recorded for the operator, never believed: a replay is published as the replaying
    # connection's user (``DeadLetterAdmin.replay``).
    user_id: str | None = None


@runtime_checkable
class DeadLetterAdmin(Protocol):
    """Inspect and re-drive a bus's dead-letter queues (``orderstack dlq``). ``queue`` is a
    consuming queue's name; its dead letters are read in the order they arrived."""

    async def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first; they stay where they are."""

    async def replay(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Publish these dead letters (None: all of them) again with their original routing
        key and ``message_id`` (so the consumer's inbox still deduplicates), as this bus's
        own broker user (``user_id``: whoever replays vouches for them), each removed
        from the dead-letter queue only once the broker confirmed its copy; return how many.
        Dying midway loses nothing: at worst one message is both replayed and still there."""

    async def purge(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Delete these dead letters (None: all of them); return how many were deleted."""

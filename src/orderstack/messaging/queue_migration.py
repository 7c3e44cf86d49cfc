"""``orderstack migrate-queues``: give existing queues the type QUEUE_TYPE asks for.

RabbitMQ cannot change a queue's type in place (a declare with other arguments is refused
with PRECONDITION_FAILED), so each queue whose arguments differ is moved, with its
messages, through a temporary queue of the new type:

1. declare ``<queue>.migrating`` with the final arguments and bind it like the queue
   (new messages now reach it too), then unbind the old queue (they reach only it);
2. move the old queue's messages into it, delete the old queue (refused if it is not
   empty or a consumer is attached);
3. declare the queue again with the final arguments and bind it, unbind the temporary one;
4. move the messages back, delete the temporary queue.

A message is moved by taking it (basic.get, unacked), publishing a copy with publisher
confirms, and acking the original only once the broker confirmed the copy: a crash in
between leaves both, never neither. Copies keep the body, properties (the ``user_id`` of
their publisher too, which their consumer checks: the broker takes such a copy only from that
user or one tagged ``impersonator``, docs/security.md), headers and routing
key (through a temporary direct exchange bound to the destination alone), so the message
id is the same and the consumers' inbox applies a leftover double once. Between 1's bind
and unbind, a message published then is in both queues: the same id again. Each step
looks at what the broker holds, so a run cut short is finished by running it again.

Run it with the services stopped (no consumer on the queues): publishers may keep
publishing, consumers would hold messages the move cannot take.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from orderstack.messaging.topology import (
    ALL_QUEUES,
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    QueueType,
    dead_letter_queue_arguments,
    queue_arguments,
)

TEMPORARY_SUFFIX = ".migrating"
# Headers the broker sets on delivery; a moved copy starts afresh.
_BROKER_HEADERS = ("x-delivery-count",)


class QueueInUse(RuntimeError):
    """A queue to move has consumers: stop the services first."""


@dataclass(frozen=True, slots=True)
class QueueTarget:
    name: str
    arguments: dict[str, Any]
    bindings: tuple[tuple[str, str], ...]  # (exchange, routing key)

    @property
    def temporary(self) -> str:
        return self.name + TEMPORARY_SUFFIX


@dataclass(frozen=True, slots=True)
class QueueMigration:
    queue: str
    action: str  # "unchanged", "created", "moved"
    messages: int = 0  # messages now in the queue that were moved into it

    def describe(self) -> str:
        if self.action == "moved":
            return f"{self.queue}: moved, {self.messages} message(s) kept"
        return f"{self.queue}: {self.action}"


def targets(queue_type: QueueType) -> list[QueueTarget]:
    """Every queue of the topology with its final arguments; dead-letter queues first, so
    that a work queue's dead letters always have somewhere to go."""
    dead_letter_queues = [
        QueueTarget(
            spec.dead_letter_queue,
            dead_letter_queue_arguments(queue_type),
            ((DEAD_LETTER_EXCHANGE, spec.dead_letter_queue),),
        )
        for spec in ALL_QUEUES
    ]
    work_queues = [
        QueueTarget(
            spec.name,
            queue_arguments(spec, queue_type),
            tuple((EXCHANGE, key) for key in spec.routing_keys),
        )
        for spec in ALL_QUEUES
    ]
    return [*dead_letter_queues, *work_queues]


async def connect_first(urls: Sequence[str]) -> AbstractConnection:
    """A plain (not robust) connection to the first of ``urls`` that answers: a migration
    cut by a lost connection stops, and is finished by running it again."""
    error: Exception = ValueError("no broker URL")
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=5)
        except (TimeoutError, aiormq.exceptions.AMQPConnectionError, OSError) as exc:
            error = exc
    raise error


async def migrate_queues(
    connection: AbstractConnection,
    queue_type: QueueType,
    progress: Callable[[str], None] = lambda _: None,
) -> list[QueueMigration]:
    """Give every queue of the topology ``queue_type``; idempotent, and a run cut short is
    completed by the next. Raises QueueInUse (changing nothing more) when a queue to move
    has a consumer."""
    channel = await connection.channel()
    await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    await channel.close()
    results = []
    for target in targets(queue_type):
        result = await _migrate(connection, target)
        progress(result.describe())
        results.append(result)
    return results


async def _migrate(connection: AbstractConnection, target: QueueTarget) -> QueueMigration:
    state = await _state(connection, target.name, target.arguments)
    temporary_left = await _state(connection, target.temporary, target.arguments) is not None
    if state == "same" and not temporary_left:
        return QueueMigration(target.name, "unchanged")
    if state is None and not temporary_left:
        channel = await connection.channel()
        await _declare_bound(channel, target.name, target)
        await channel.close()
        return QueueMigration(target.name, "created")
    if state == "other":
        async with _confirming_channel(connection) as channel:
            old = await channel.declare_queue(target.name, passive=True)
            if old.declaration_result.consumer_count:
                raise QueueInUse(
                    f"{target.name} has {old.declaration_result.consumer_count} consumer(s): "
                    "stop the services before migrating the queues"
                )
            await _declare_bound(channel, target.temporary, target)
            for exchange, key in target.bindings:
                await old.unbind(exchange, key)
            await _move(channel, target.name, target.temporary)
            await _delete_emptied(channel, target.name)
    # A fresh channel for the queue declared again under the same name: RabbitMQ 3.10's
    # channel remembers the old queue's type and fails publishing to the new one.
    async with _confirming_channel(connection) as channel:
        await _declare_bound(channel, target.name, target)
        temporary = await channel.declare_queue(
            target.temporary, durable=True, arguments=target.arguments
        )
        for exchange, key in target.bindings:
            await temporary.unbind(exchange, key)
        moved = await _move(channel, target.temporary, target.name)
        await _delete_emptied(channel, target.temporary)
    return QueueMigration(target.name, "moved", moved)


@contextlib.asynccontextmanager
async def _confirming_channel(connection: AbstractConnection) -> AsyncIterator[AbstractChannel]:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            await channel.close()


async def _state(
    connection: AbstractConnection, name: str, arguments: dict[str, Any]
) -> str | None:
    """None: no such queue; "same": it exists with ``arguments``; "other": with others.
    Each probe has a channel of its own: a refused declare closes its channel."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    await channel.close()
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed:
        return "other"
    await channel.close()
    return "same"


async def _declare_bound(
    channel: AbstractChannel, name: str, target: QueueTarget
) -> aio_pika.abc.AbstractQueue:
    queue = await channel.declare_queue(name, durable=True, arguments=target.arguments)
    for exchange, key in target.bindings:
        await queue.bind(exchange, key)
    return queue


async def _move(channel: AbstractChannel, source: str, destination: str) -> int:
    """Move every message of ``source`` to ``destination``, oldest first, each acked only
    after its copy is confirmed; how many were moved."""
    via = await channel.declare_exchange(
        f"orderstack.migration.{destination}", aio_pika.ExchangeType.DIRECT, durable=True
    )
    queue = await channel.declare_queue(source, passive=True)
    target = await channel.declare_queue(destination, passive=True)
    bound: set[str] = set()
    moved = 0
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        key = message.routing_key or ""
        if key not in bound:
            await target.bind(via, key)
            bound.add(key)
        await via.publish(_copy(message), routing_key=key, mandatory=True)  # confirmed
        await message.ack()
        moved += 1
    await via.delete()
    return moved


async def _delete_emptied(channel: AbstractChannel, name: str) -> None:
    """Delete queue ``name``, which was unbound and emptied; raise if it holds a message
    or has a consumer after all (quorum queues take no if-empty / if-unused delete)."""
    queue = await channel.declare_queue(name, passive=True)
    held = queue.declaration_result
    if held.message_count or held.consumer_count:
        raise QueueInUse(
            f"{name} still has {held.message_count} message(s), {held.consumer_count} "
            "consumer(s): stop the services and run migrate-queues again"
        )
    await queue.delete(if_unused=False, if_empty=False)


def _copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_HEADERS}
    return aio_pika.Message(
        message.body,
        headers=headers,
        message_id=message.message_id,
        type=message.type,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration,
        timestamp=message.timestamp,
        app_id=message.app_id,
        priority=message.priority,
        # Who published it, which the consumer checks (messaging/trust.py): kept, so the
        # broker accepts the copy only from that user or one tagged `impersonator`.
        user_id=message.user_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )

"""RabbitMQ adapter of the bus port (aio-pika, robust connection, publisher confirms)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)

from orderstack.messaging.bus import OnDelivery, PublishError
from orderstack.messaging.envelope import Event, encode
from orderstack.messaging.topology import (
    ALL_QUEUES,
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    ROUTED_EVENTS,
    QueueSpec,
)

PUBLISH_TIMEOUT_SECONDS = 10.0

FRAME_BUFFER = 4096


def _widen_aiormq_frame_buffers(size: int) -> None:
    """aiormq passes frames through queues of 10: outgoing frames to the socket writer, and
    incoming frames to each channel. Past ten, every publish, ack, delivery and confirm
    waits an event-loop turn for room: in a busy service (hundreds of requests per loop
    turn) a relay round of 500 events took seconds and deliveries trickled in a few per
    turn (measured with ``make bench``). Neither size is exposed by aio-pika, so the
    defaults are widened here, once, before any connection is made; a test checks that
    the channels a bus opens get them."""
    aiormq.Connection.FRAME_BUFFER_SIZE = size
    channel = aiormq.Connection.channel
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    with_defaults = [
        p.name
        for p in inspect.signature(channel).parameters.values()
        if p.kind in positional and p.default is not inspect.Parameter.empty
    ]
    defaults = list(channel.__defaults__ or ())
    defaults[with_defaults.index("frame_buffer_size")] = size
    channel.__defaults__ = tuple(defaults)


_widen_aiormq_frame_buffers(FRAME_BUFFER)


class _AmqpDelivery:
    __slots__ = ("_message", "body", "message_id", "routing_key")

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message
        self.body = message.body
        self.message_id = message.message_id
        self.routing_key = message.routing_key

    async def ack(self) -> None:
        # Straight to the channel with wait=False: the frame is queued for the socket at
        # once. Waiting for each ack to drain costs a few event-loop turns per message,
        # which a busy service pays in seconds per batch.
        if self._message.delivery_tag is not None:
            await self._message.channel.basic_ack(self._message.delivery_tag, wait=False)

    async def dead_letter(self) -> None:
        await self._message.reject(requeue=False)

    async def requeue(self) -> None:
        await self._message.nack(requeue=True)


def _confirmed(result: object) -> bool:
    """A Basic.Ack from the broker. A Basic.Return (unroutable, mandatory) raises with
    ``on_return_raises``; a Nack raises DeliveryError; this guards what is left."""
    return isinstance(result, aiormq.spec.Basic.Ack)


class RabbitMQBus:
    """Publishes on one confirming channel; consumes on channels of its own.

    The connection is robust: after a broker restart aio-pika reconnects, re-declares the
    topology and resubscribes. Deliveries in flight at the break are redelivered by the
    broker, and the inbox makes the second delivery a no-op.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._exchange: AbstractRobustExchange | None = None

    async def start(self) -> None:
        """Connect and declare; idempotent, and safe to call again after a failure."""
        if self._exchange is not None:
            return
        if self._connection is None:
            self._connection = await aio_pika.connect_robust(
                self._url, timeout=5, client_properties={"connection_name": "orderstack"}
            )
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._publish_channel = channel  # type: ignore[assignment]
        self._exchange = await self._declare(channel)  # type: ignore[arg-type]

    @staticmethod
    async def _declare(channel: AbstractRobustChannel) -> AbstractRobustExchange:
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        dlx = await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        for spec in ALL_QUEUES:
            dlq = await channel.declare_queue(spec.dead_letter_queue, durable=True)
            await dlq.bind(dlx, routing_key=spec.dead_letter_queue)
            queue = await channel.declare_queue(
                spec.name,
                durable=True,
                arguments={
                    "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                    "x-dead-letter-routing-key": spec.dead_letter_queue,
                },
            )
            for key in spec.routing_keys:
                await queue.bind(exchange, routing_key=key)
        return exchange  # type: ignore[return-value]

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(self, events: Sequence[Event]) -> None:
        if self._exchange is None or self._publish_channel is None:
            raise PublishError("bus not started")
        channel = cast(aiormq.Channel, await self._publish_channel.get_underlay_channel())
        # All publishes are queued for the socket at once (wait=False: no event-loop turn
        # per message to wait for its write to drain); the confirms come back pipelined.
        results = await asyncio.gather(
            *(
                channel.basic_publish(
                    encode(event),
                    exchange=EXCHANGE,
                    routing_key=event.name,
                    properties=aiormq.spec.Basic.Properties(
                        message_id=event.id,
                        message_type=event.name,
                        content_type="application/json",
                        delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
                    ),
                    mandatory=event.name in ROUTED_EVENTS,
                    timeout=PUBLISH_TIMEOUT_SECONDS,
                    wait=False,
                )
                for event in events
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException) or not _confirmed(r)]
        if failures:
            raise PublishError(f"{len(failures)} of {len(events)} not confirmed: {failures[0]!r}")

    async def consume(self, queue: QueueSpec, on_delivery: OnDelivery, prefetch: int) -> None:
        if self._connection is None:
            raise RuntimeError("bus not started")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        amqp_queue = await channel.get_queue(queue.name, ensure=True)

        async def deliver(message: AbstractIncomingMessage) -> None:
            await on_delivery(_AmqpDelivery(message))

        await amqp_queue.consume(deliver)

    async def is_up(self) -> bool:
        connection = self._connection
        return (
            connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and self._exchange is not None
        )

"""RabbitMQ adapter of the bus port (aio-pika, robust connection, publisher confirms)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
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


class _AmqpDelivery:
    __slots__ = ("_message", "body", "message_id", "routing_key")

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self._message = message
        self.body = message.body
        self.message_id = message.message_id
        self.routing_key = message.routing_key

    async def ack(self) -> None:
        await self._message.ack()

    async def dead_letter(self) -> None:
        await self._message.reject(requeue=False)

    async def requeue(self) -> None:
        await self._message.nack(requeue=True)


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
        if self._exchange is None:
            raise PublishError("bus not started")
        exchange = self._exchange
        # All publishes go out at once; the confirms come back pipelined.
        results = await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        encode(event),
                        message_id=event.id,
                        type=event.name,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=event.name,
                    mandatory=event.name in ROUTED_EVENTS,
                    timeout=PUBLISH_TIMEOUT_SECONDS,
                )
                for event in events
            ),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
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

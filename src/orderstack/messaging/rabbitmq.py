"""RabbitMQ adapter of the bus port (aio-pika, robust connection, publisher confirms).

Every message it publishes carries the AMQP ``user_id`` of its connection's user, which the
broker checks (a message naming another user is refused): the consumer on the other side
believes an event only from the broker user of the service that publishes it
(messaging/trust.py). With one user per service, a bus declares the queues of the services
that publish as its user only (the broker's definitions, deploy/rabbitmq/, declare them
all); with one shared user, all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, cast

import aio_pika
import aiormq
import orjson
import structlog
import yarl
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp.header import ContentHeader

from orderstack.messaging.bus import (
    DeadLetter,
    Delivery,
    OnDelivery,
    PublishError,
    ack_each,
)
from orderstack.messaging.envelope import (
    BATCH_CONTENT_TYPE,
    BatchMember,
    Event,
    batch_members,
    delivery_id,
    encode,
    encode_batch,
    origin_headers,
)
from orderstack.messaging.topology import (
    ALL_QUEUES,
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    QUEUES,
    ROUTED_EVENTS,
    QueueSpec,
    QueueType,
    dead_letter_queue_arguments,
    queue_arguments,
)
from orderstack.messaging.trust import PublisherTrust

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_SECONDS = 10.0
# A batch message's bound (``batch_events`` bounds its events): its events' bodies together.
MAX_BATCH_BYTES = 1024 * 1024

# Headers of a message the consumer dead-lettered: why, and where it came from (in the
# dead-letter queue its routing key is the queue's, so the original one is kept here).
REASON_HEADER = "x-orderstack-reason"
ROUTING_KEY_HEADER = "x-orderstack-routing-key"
QUEUE_HEADER = "x-orderstack-queue"
DEAD_LETTERED_AT_HEADER = "x-orderstack-dead-lettered-at"
# The original's ``user_id``: the copy is published by the consumer's own user, which the
# broker would refuse to carry another user's ``user_id``. For the operator's eyes only.
USER_ID_HEADER = "x-orderstack-user-id"
_DEAD_LETTER_HEADERS = (
    REASON_HEADER,
    ROUTING_KEY_HEADER,
    QUEUE_HEADER,
    DEAD_LETTERED_AT_HEADER,
    USER_ID_HEADER,
)
MAX_REASON_CHARS = 1000

# The frame queues ``tune_aiormq`` gives aiormq's connections and channels: room for a relay
# round (a few hundred publishes and their confirms) and a prefetch window of deliveries.
FRAME_BUFFER = 4096

# The aiormq releases whose internals ``tune_aiormq`` was checked against (pyproject.toml
# pins one). Add a version here only after checking that ``Connection.FRAME_BUFFER_SIZE``
# still sizes the write queue and ``Connection.channel(frame_buffer_size=...)`` still sizes
# each channel's queues, and that the frame-buffer test on RabbitMQ passes.
KNOWN_AIORMQ_VERSIONS = frozenset({"7.2.4"})


def installed_aiormq_version() -> str:
    return metadata.version("aiormq")


# Whether the installed aiormq is one whose internals ``_publish_pipelined`` was checked
# against; on any other the bus publishes through ``basic_publish``, message by message.
_AIORMQ_CHECKED = installed_aiormq_version() in KNOWN_AIORMQ_VERSIONS


class UnsupportedAiormqVersion(RuntimeError):
    """``tune_aiormq`` was asked to tune an aiormq it was not checked against."""


def tune_aiormq(frame_buffer: int = FRAME_BUFFER) -> None:
    """Give every aiormq connection and channel opened from now on frame queues of
    ``frame_buffer`` instead of 10 (docs/aiormq-tuning.md says why). Process-wide, so call
    it once at start-up, before the first connection (a service's composition root does);
    idempotent. Raises UnsupportedAiormqVersion, changing nothing, when the installed
    aiormq is not one of KNOWN_AIORMQ_VERSIONS or does not look the way they do."""
    version = installed_aiormq_version()
    if version not in KNOWN_AIORMQ_VERSIONS:
        raise UnsupportedAiormqVersion(
            f"aiormq {version} is not one tune_aiormq was checked against "
            f"({', '.join(sorted(KNOWN_AIORMQ_VERSIONS))}); see docs/aiormq-tuning.md"
        )
    channel = aiormq.Connection.channel
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    with_defaults = [
        p.name
        for p in inspect.signature(channel).parameters.values()
        if p.kind in positional and p.default is not inspect.Parameter.empty
    ]
    defaults = list(channel.__defaults__ or ())
    if (
        not isinstance(getattr(aiormq.Connection, "FRAME_BUFFER_SIZE", None), int)
        or "frame_buffer_size" not in with_defaults
        or len(defaults) != len(with_defaults)
    ):
        raise UnsupportedAiormqVersion(
            f"aiormq {version} does not have the frame buffer defaults tune_aiormq sets"
        )
    defaults[with_defaults.index("frame_buffer_size")] = frame_buffer
    aiormq.Connection.FRAME_BUFFER_SIZE = frame_buffer
    channel.__defaults__ = tuple(defaults)


def amqp_urls(value: str) -> list[str]:
    """The broker URLs of a RABBITMQ_URL: one, or several comma-separated (the nodes of a
    cluster)."""
    return [url.strip() for url in value.split(",") if url.strip()]


def login_user(value: str) -> str:
    """The user a RABBITMQ_URL logs in as (its first URL's; the settings check that every
    node's is the same): percent-decoded, ``guest`` when it names none, as aiormq does."""
    urls = amqp_urls(value)
    return (yarl.URL(urls[0]).user if urls else None) or "guest"


class _RawConsumingQueue(aio_pika.RobustQueue):
    """aio-pika's robust queue (its consumers subscribed again after a reconnect), whose
    ``consume`` hands the callback aiormq's deliveries themselves
    (``aiormq.abc.DeliveredMessage``): aio-pika's own wrapping makes an
    ``IncomingMessage`` of each (some thirty attribute writes) and runs the callback in a
    task of its own, beside the one aiormq runs each delivery in. The bus's connection
    (``FailoverConnection``) makes its queues of this class; the bus's ``deliver`` is the
    only consumer on them."""

    async def consume(
        self,
        callback: Callable[..., Awaitable[Any]],
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Any = None,
        consumer_tag: Any = None,
        timeout: Any = None,
        robust: bool = True,
    ) -> Any:
        channel = await self.channel.get_underlay_channel()
        result = await channel.basic_consume(
            queue=self.name,
            consumer_callback=cast(Any, callback),
            exclusive=exclusive,
            no_ack=no_ack,
            arguments=arguments,
            consumer_tag=consumer_tag,
            timeout=timeout,
        )
        if result.consumer_tag is None:
            raise RuntimeError("Consumer tag is None")
        if robust:  # as RobustQueue.consume records it: restore() subscribes it again
            self._consumers[result.consumer_tag] = dict(
                callback=callback, no_ack=no_ack, exclusive=exclusive, arguments=arguments
            )
        return result.consumer_tag


class _RawConsumingChannel(aio_pika.RobustChannel):
    QUEUE_CLASS = _RawConsumingQueue


class FailoverConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection (re-declares and re-subscribes after a break) over
    several brokers: each connection attempt goes to the next URL in turn, so a dead node
    is left for a live one. aio-pika takes one URL; the step it repeats per attempt is
    overridden here, and ``connect_failover`` refuses an aio-pika without it."""

    CHANNEL_CLASS = _RawConsumingChannel

    def __init__(self, urls: Sequence[str], first: int = 0, **kwargs: Any) -> None:
        super().__init__(yarl.URL(urls[first % len(urls)]), **kwargs)
        self._urls = [yarl.URL(url) for url in urls]
        self._attempt = first

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._urls[self._attempt % len(self._urls)]
        self._attempt += 1
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]


async def connect_failover(
    urls: Sequence[str], *, timeout: float = 5.0, name: str = "orderstack"
) -> AbstractRobustConnection:
    """A robust connection to the first of ``urls`` that answers, each tried in turn
    from a random one (so that replicas spread over a cluster's nodes and a node's loss
    takes only some of them away); after a break it reconnects to the next that answers.
    Raises the last URL's connection error when none does."""
    if len(urls) > 1 and not hasattr(
        aio_pika.RobustConnection, "_RobustConnection__connect_transport"
    ):
        raise RuntimeError("this aio-pika cannot fail over between brokers (FailoverConnection)")
    error: Exception = ValueError("no broker URL")
    start = random.randrange(len(urls)) if urls else 0
    for tried in range(len(urls)):
        first = (start + tried) % len(urls)
        connection = FailoverConnection(urls, first, client_properties={"connection_name": name})
        try:
            await connection.connect(timeout=timeout)
            return connection
        except asyncio.CancelledError:
            # The attempt runs in aio-pika's own reconnecting task, which a cancelled wait
            # leaves running: it would keep connecting, unseen, and keep the process from
            # ending (a stop during start-up hung on it).
            await connection.close()
            raise
        except (TimeoutError, aiormq.exceptions.AMQPConnectionError, OSError) as exc:
            error = exc
            with contextlib.suppress(Exception):
                await connection.close()
            log.warning("broker unreachable, trying the next", url=str(connection), error=repr(exc))
    raise error


class QueueTypeMismatch(RuntimeError):
    """The broker holds our queues with other declare arguments than the bus's."""


class _AmqpDelivery:
    __slots__ = (
        "_bus",
        "_queue",
        "_message",
        "body",
        "channel",
        "content_type",
        "headers",
        "message_id",
        "routing_key",
        "tag",
        "user_id",
    )

    def __init__(self, message: DeliveredMessage, bus: RabbitMQBus, queue: QueueSpec) -> None:
        self._bus, self._queue, self._message = bus, queue, message
        properties = message.header.properties
        delivery = cast(aiormq.spec.Basic.Deliver, message.delivery)  # a consumer's, always
        self.body = message.body
        self.message_id: str | None = properties.message_id
        self.routing_key: str | None = delivery.routing_key
        self.headers: Mapping[str, Any] | None = properties.headers
        self.user_id: str | None = properties.user_id  # the broker checked it: the publisher's
        self.content_type: str | None = properties.content_type
        # The channel it came on: a batch may hold deliveries of a channel lost since (a
        # reconnect), whose settling then fails alone.
        self.channel: Any = message.channel
        self.tag: int | None = delivery.delivery_tag
        if self.tag is not None:
            bus._unsettled_on(self.channel).add(self.tag)

    async def ack(self) -> None:
        # Straight to the channel with wait=False: the frame is queued for the socket at
        # once. Waiting for each ack to drain costs a few event-loop turns per message,
        # which a busy service pays in seconds per batch.
        tag = self.tag
        if tag is not None:
            self._bus._unsettled_on(self.channel).discard(tag)
            await self.channel.basic_ack(tag, wait=False)

    async def dead_letter(self, reason: str) -> None:
        """A copy carrying the reason goes to the dead-letter queue (confirmed) before the
        original is acked: dying in between leaves both, never neither. Without a confirm,
        the broker dead-letters the original itself (``x-death`` headers, no reason)."""
        try:
            await self._bus._publish_dead_letter(
                self._queue, aio_pika.IncomingMessage(self._message), reason
            )
        except Exception as exc:
            log.warning(
                "dead-letter copy not confirmed, rejecting instead",
                queue=self._queue.name,
                message_id=self.message_id,
                error=repr(exc),
            )
            await self.reject()
            return
        await self.ack()

    async def reject(self) -> None:
        """Reject without requeueing: the broker dead-letters it (``x-death``)."""
        if self.tag is not None:
            self._bus._unsettled_on(self.channel).discard(self.tag)
            await self.channel.basic_reject(self.tag, requeue=False)


class _Envelope:
    """A batch message handed out as its members: acked once each of them is settled."""

    __slots__ = ("delivery", "left", "settled")

    def __init__(self, delivery: _AmqpDelivery, members: int) -> None:
        self.delivery, self.left, self.settled = delivery, members, False

    def member_settled(self) -> bool:
        """Count one member settled; True when it was the last (the message is to be
        acked now, once)."""
        self.left -= 1
        if self.left or self.settled:
            return False
        self.settled = True
        return True


class _BatchMember:
    """One event of a batch message, delivered as a message of its own would be: its own
    body, id and origin headers, the batch's routing key and (broker-checked) user."""

    __slots__ = ("_envelope", "body", "channel", "headers", "message_id", "routing_key", "user_id")

    def __init__(self, envelope: _Envelope, member: BatchMember) -> None:
        self._envelope = envelope
        delivery = envelope.delivery
        self.body = member.body
        self.message_id = member.message_id
        self.headers: Mapping[str, Any] | None = member.headers
        self.routing_key = delivery.routing_key
        self.user_id = delivery.user_id
        self.channel = delivery.channel

    def settled(self) -> _AmqpDelivery | None:
        """Count this member settled; the batch message when it is to be acked now."""
        return self._envelope.delivery if self._envelope.member_settled() else None

    async def ack(self) -> None:
        if (message := self.settled()) is not None:
            await message.ack()

    async def dead_letter(self, reason: str) -> None:
        """This event alone goes to the dead-letter queue, as a message of its own (its
        body, id and origin, confirmed); the batch message is acked once every member is
        settled. Without a confirm, the whole batch message is rejected: the broker
        dead-letters it itself (``x-death``), its other events with it, whose effects, if
        applied, a replay finds in the inbox."""
        envelope = self._envelope
        delivery = envelope.delivery
        try:
            await delivery._bus._publish_member_dead_letter(delivery, self, reason)
        except Exception as exc:
            log.warning(
                "dead-letter copy not confirmed, rejecting its batch instead",
                queue=delivery._queue.name,
                message_id=self.message_id,
                error=repr(exc),
            )
            if not envelope.settled:
                envelope.settled = True
                await delivery.reject()
            return
        await self.ack()


def _confirmed(result: object) -> bool:
    """A Basic.Ack from the broker. A Basic.Return (unroutable, mandatory) raises with
    ``on_return_raises``; a Nack raises DeliveryError; this guards what is left."""
    return isinstance(result, aiormq.spec.Basic.Ack)


# A message to publish: body, routing key, properties, mandatory.
_Outgoing = tuple[bytes, str, aiormq.spec.Basic.Properties, bool]


def _pipelining(channel: aiormq.Channel, messages: Sequence[_Outgoing]) -> bool:
    """Whether ``_publish_pipelined`` may publish ``messages`` on ``channel``: an aiormq
    channel of a version it was checked against (KNOWN_AIORMQ_VERSIONS), confirming, and
    every message with an id (aiormq gives one without a random one, which
    ``basic_publish`` does)."""
    return (
        _AIORMQ_CHECKED
        and isinstance(channel, aiormq.Channel)
        and channel.publisher_confirms
        and all(properties.message_id for _, _, properties, _ in messages)
    )


async def _publish_pipelined(
    channel: aiormq.Channel, exchange: str, messages: Sequence[_Outgoing]
) -> list[object]:
    """Publish ``messages`` on the confirming ``channel`` exactly as aiormq's
    ``basic_publish`` publishes each (the same frames, delivery tags and confirmation
    futures, the same bookkeeping for a returned mandatory message), but all under one
    hold of the channel's lock and written to the socket as one chunk: one socket write
    and no task, lock, timeout or drain future per message. Returns each message's
    confirmation in order: the broker's Basic.Ack, or the exception (a Nack, a return, the
    channel's close). Relies on aiormq's internals: used only on KNOWN_AIORMQ_VERSIONS
    (``_pipelining``); a cancellation (a timeout) cancels the confirmations not in yet."""
    confirmations: list[asyncio.Future[Any]] = []
    tags: list[tuple[str, int]] = []
    async with channel.lock:
        before = channel.delivery_tag
        try:
            frames: list[Any] = []
            for body, routing_key, properties, mandatory in messages:
                if len(routing_key) > 255:
                    raise ValueError("Routing key too long (max 255 bytes)")
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                message_id = cast(str, properties.message_id)
                channel.message_id_delivery_tag[message_id] = tag
                confirmations.append(confirmation)
                tags.append((message_id, tag))
                frames.append(
                    aiormq.spec.Basic.Publish(
                        exchange=exchange, routing_key=routing_key, mandatory=mandatory
                    )
                )
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames.extend(channel._split_body(body))
            await channel.write_queue.put(
                ChannelFrame.marshall(channel_number=channel.number, frames=frames)
            )
        except BaseException:
            # Nothing was written: the broker never saw them; their tags are reused.
            channel.delivery_tag = before
            for (message_id, tag), confirmation in zip(tags, confirmations, strict=True):
                channel.confirmations.pop(tag, None)
                if channel.message_id_delivery_tag.get(message_id) == tag:
                    del channel.message_id_delivery_tag[message_id]
                confirmation.cancel()
            raise
    try:
        return await asyncio.gather(*confirmations, return_exceptions=True)
    finally:
        for message_id, tag in tags:
            if channel.message_id_delivery_tag.get(message_id) == tag:
                del channel.message_id_delivery_tag[message_id]


class RabbitMQBus:
    """Publishes on one confirming channel; consumes on channels of its own. Call
    ``tune_aiormq`` once before the first bus starts (the composition root does).

    ``url`` is one broker URL or several comma-separated (a cluster's nodes). The connection
    is robust: after a broker restart or a node's loss it reconnects (to the next node that
    answers), re-declares the topology and resubscribes. Deliveries in flight at the break are
    redelivered by the broker, and the inbox makes the second delivery a no-op.
    """

    def __init__(
        self,
        url: str,
        queue_type: QueueType = "quorum",
        trust: PublisherTrust | None = None,
        *,
        batch_events: int = 1,
    ) -> None:
        """``trust``: each service's broker user (None: this URL's user for both).
        ``batch_events``: up to how many consecutive events of one name ``publish`` sends
        in one message (envelope.py's batch: this project's consumers read it, a seed
        consumer does not); 1, one event per message, as the seed's services publish."""
        self._url = url
        self._batch_events = max(1, batch_events)
        self._queue_type = queue_type
        self._user = login_user(url)  # every message's user_id
        self.trust = trust if trust is not None else PublisherTrust.shared(self._user)
        # The queues it declares: those of the services that publish as its user (their
        # owner, or the broker's definitions, declares the others: with one user per
        # service, a user may configure its own queues only); an operator's user that is
        # neither service's (orderstack dlq, migrate-queues) declares them all.
        own = self.trust.services_of(self._user)
        self._queues = tuple(q for s, q in QUEUES.items() if s in own) if own else ALL_QUEUES
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._exchange: AbstractRobustExchange | None = None
        # The consuming queues' subscriptions: queue name -> (queue, consumer tag).
        self._subscriptions: dict[str, tuple[AbstractQueue, str]] = {}
        # Per consuming channel, the delivery tags handed out and not settled yet (a
        # channel replaced after a reconnect drops out with its tags): ack_all may settle
        # a batch with one multiple ack only when no other tag below its highest waits.
        self._unsettled: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()

    async def start(self) -> None:
        """Connect and declare; idempotent, and safe to call again after a failure."""
        if self._exchange is not None:
            return
        if self._connection is None:
            self._connection = await connect_failover(amqp_urls(self._url))
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._publish_channel = channel  # type: ignore[assignment]
        try:
            self._exchange = await self._declare(channel)  # type: ignore[arg-type]
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise QueueTypeMismatch(
                f"{exc}. The queues exist with other arguments (classic queues of an "
                f"earlier version, or another QUEUE_TYPE): run `orderstack migrate-queues` "
                f"with QUEUE_TYPE={self._queue_type}, or set QUEUE_TYPE to their type"
            ) from exc

    async def _declare(self, channel: AbstractRobustChannel) -> AbstractRobustExchange:
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        dlx = await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        for spec in self._queues:
            dlq = await channel.declare_queue(
                spec.dead_letter_queue,
                durable=True,
                arguments=dead_letter_queue_arguments(self._queue_type),
            )
            await dlq.bind(dlx, routing_key=spec.dead_letter_queue)
            queue = await channel.declare_queue(
                spec.name, durable=True, arguments=queue_arguments(spec, self._queue_type)
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
        most = self._batch_events
        runs = _runs(events, most) if most > 1 else [[event] for event in events]
        messages = [
            (
                encode(run[0]) if len(run) == 1 else encode_batch(run),
                run[0].name,
                self._properties(run),
                run[0].name in ROUTED_EVENTS,
            )
            for run in runs
        ]
        results: Sequence[object]
        if _pipelining(channel, messages):
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                    results = await _publish_pipelined(channel, EXCHANGE, messages)
            except Exception as exc:  # a timeout, the channel closed: none is known sent
                raise PublishError(
                    f"{len(runs)} messages ({len(events)} events) not confirmed: {exc!r}"
                ) from exc
        else:
            # All publishes are queued for the socket at once (wait=False: no event-loop
            # turn per message to wait for its write to drain); the confirms come back
            # pipelined.
            results = await asyncio.gather(
                *(
                    channel.basic_publish(
                        body,
                        exchange=EXCHANGE,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=mandatory,
                        timeout=PUBLISH_TIMEOUT_SECONDS,
                        wait=False,
                    )
                    for body, routing_key, properties, mandatory in messages
                ),
                return_exceptions=True,
            )
        failures = [r for r in results if isinstance(r, BaseException) or not _confirmed(r)]
        if failures:
            raise PublishError(
                f"{len(failures)} of {len(runs)} messages ({len(events)} events) not "
                f"confirmed: {failures[0]!r}"
            )

    def _properties(self, run: Sequence[Event]) -> aiormq.spec.Basic.Properties:
        """A message's properties: an event's own (its id, name, origin), or a batch's."""
        event = run[0]
        if len(run) == 1:
            return aiormq.spec.Basic.Properties(
                message_id=event.id,
                user_id=self._user,  # checked by the broker; believed by consumers
                message_type=event.name,
                content_type="application/json",
                delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
                # x-request-id, traceparent: where it comes from (envelope.py)
                headers=_origin_headers(event),
            )
        return aiormq.spec.Basic.Properties(
            # Its own id (a dead-letter queue's message, if the broker moves it whole);
            # each event's is in the body.
            message_id=f"batch-{event.id}",
            user_id=self._user,
            message_type=event.name,
            content_type=BATCH_CONTENT_TYPE,
            delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
        )

    async def consume(self, queue: QueueSpec, on_delivery: OnDelivery, prefetch: int) -> None:
        if self._connection is None:
            raise RuntimeError("bus not started")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        amqp_queue = await channel.get_queue(queue.name, ensure=True)

        async def deliver(message: DeliveredMessage) -> None:
            delivery = _AmqpDelivery(message, self, queue)
            members = (
                batch_members(message.body) if delivery.content_type == BATCH_CONTENT_TYPE else None
            )
            if members is None:
                await on_delivery(delivery)
                return
            envelope = _Envelope(delivery, len(members))
            for member in members:
                await on_delivery(_BatchMember(envelope, member))

        # A _RawConsumingQueue (this connection's channels make them): aiormq's deliveries.
        tag = await amqp_queue.consume(cast(Any, deliver))  # typed for aio-pika's messages
        self._subscriptions[queue.name] = (amqp_queue, tag)

    def _unsettled_on(self, channel: Any) -> set[int]:
        tags = self._unsettled.get(channel)
        if tags is None:
            tags = self._unsettled[channel] = set()
        return tags

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """Ack a consumer's batch. Deliveries of one channel whose highest tag has no
        other unsettled tag below it (a dead letter not moved yet, a delivery of another
        batch) are acked with one ``multiple`` ack: one frame, and one settle command in a
        quorum queue's log, instead of one per message; otherwise each is acked alone."""
        by_channel: dict[Any, list[_AmqpDelivery]] = {}
        for delivery in deliveries:
            if isinstance(delivery, _BatchMember):  # its message, once all its events are
                message = delivery.settled()
                if message is None:
                    continue
                delivery = message
            assert isinstance(delivery, _AmqpDelivery)
            by_channel.setdefault(delivery.channel, []).append(delivery)
        alone: list[_AmqpDelivery] = []
        failure: Exception | None = None
        for channel, batch in by_channel.items():
            tags = {d.tag for d in batch if d.tag is not None}
            unsettled = self._unsettled_on(channel)
            top = max(tags, default=0)
            if len(tags) > 1 and all(t in tags for t in unsettled if t <= top):
                unsettled.difference_update(tags)
                try:
                    await channel.basic_ack(top, multiple=True, wait=False)
                except Exception as exc:  # that channel is gone; the others are acked still
                    failure = failure or exc
            else:
                alone.extend(batch)
        try:
            await ack_each(alone)
        except Exception as exc:
            failure = failure or exc
        if failure is not None:
            raise failure

    async def stop_consuming(self, queue: QueueSpec) -> None:
        """Basic.Cancel on the queue's subscription; its channel stays open, so that the
        deliveries held can still be acked (the rest go back when the connection closes)."""
        subscription = self._subscriptions.pop(queue.name, None)
        if subscription is not None:
            amqp_queue, tag = subscription
            await amqp_queue.cancel(tag)

    async def is_up(self) -> bool:
        connection = self._connection
        return (
            connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and self._exchange is not None
        )

    async def _publish_dead_letter(
        self, queue: QueueSpec, message: AbstractIncomingMessage, reason: str
    ) -> None:
        """Publish a copy of ``message`` to ``queue``'s dead-letter queue with the reason;
        raise unless the broker confirmed it."""
        if self._publish_channel is None:
            raise PublishError("bus not started")
        headers = _headers_without(message.headers, ("x-death", *_DEAD_LETTER_HEADERS))
        headers[REASON_HEADER] = reason[:MAX_REASON_CHARS]
        headers[ROUTING_KEY_HEADER] = message.routing_key or ""
        headers[QUEUE_HEADER] = queue.name
        headers[DEAD_LETTERED_AT_HEADER] = datetime.now(UTC).isoformat()
        if message.user_id:
            headers[USER_ID_HEADER] = message.user_id
        copy = _copy_of(message, headers)
        channel = cast(aiormq.Channel, await self._publish_channel.get_underlay_channel())
        result = await channel.basic_publish(
            copy.body,
            exchange=DEAD_LETTER_EXCHANGE,
            routing_key=queue.dead_letter_queue,
            properties=copy.properties,
            mandatory=True,
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )
        if not _confirmed(result):
            raise PublishError(f"dead letter not confirmed: {result!r}")

    async def _publish_member_dead_letter(
        self, batch: _AmqpDelivery, member: _BatchMember, reason: str
    ) -> None:
        """Publish one event of a batch message to the dead-letter queue, as the message
        of its own it would have been (``encode``'s body, its id and origin), with the
        reason; raise unless the broker confirmed it."""
        if self._publish_channel is None:
            raise PublishError("bus not started")
        queue = batch._queue
        headers: dict[str, Any] = dict(member.headers or {})
        headers[REASON_HEADER] = reason[:MAX_REASON_CHARS]
        headers[ROUTING_KEY_HEADER] = member.routing_key or ""
        headers[QUEUE_HEADER] = queue.name
        headers[DEAD_LETTERED_AT_HEADER] = datetime.now(UTC).isoformat()
        if member.user_id:
            headers[USER_ID_HEADER] = member.user_id
        channel = cast(aiormq.Channel, await self._publish_channel.get_underlay_channel())
        result = await channel.basic_publish(
            member.body,
            exchange=DEAD_LETTER_EXCHANGE,
            routing_key=queue.dead_letter_queue,
            properties=aiormq.spec.Basic.Properties(
                message_id=delivery_id(
                    member.body, message_id=member.message_id, routing_key=member.routing_key
                ),
                message_type=member.routing_key,
                content_type="application/json",
                delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
                headers=headers,
            ),
            mandatory=True,
            timeout=PUBLISH_TIMEOUT_SECONDS,
        )
        if not _confirmed(result):
            raise PublishError(f"dead letter not confirmed: {result!r}")

    # -- the dead-letter admin port (``orderstack dlq``) ----------------------------------
    #
    # Each operation works on a channel of its own. Messages are taken with basic.get and
    # stay unacknowledged until the operation decides; those it leaves are given back when
    # the channel closes (a classic queue puts them back in their original order, a quorum
    # queue behind the others). Each operation looks at no more messages
    # than the queue held when it began, so a replayed message that fails again and comes
    # back is not taken a second time.

    async def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        letters: list[DeadLetter] = []
        held: list[AbstractIncomingMessage] = []
        async with self._dead_letter_queue(queue) as (dlq, count, channel):
            if limit > 0:
                async for message in _scan(dlq, count):
                    held.append(message)
                    letters.append(_dead_letter_of(queue, message))
                    if len(letters) >= limit:
                        break
            for message in held:
                await message.nack(requeue=True)
            await _until_ready(channel, dlq.name, max(count, len(held)))
        return letters

    async def replay(self, queue: str, message_ids: Sequence[str] | None) -> int:
        wanted = None if message_ids is None else set(message_ids)
        replayed = 0
        async with self._dead_letter_queue(queue) as (dlq, count, channel):
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            kept: list[AbstractIncomingMessage] = []
            async for message in _scan(dlq, count, kept):
                if wanted is not None and message.message_id not in wanted:
                    kept.append(message)
                    continue
                routing_key = _original_routing_key(message)
                if not routing_key:
                    log.warning("dead letter without a routing key left in place", queue=queue)
                    kept.append(message)
                    continue
                # Published as this connection's user: the operator replaying vouches for
                # it (a letter recorded from another publisher is believed again only if
                # that is the user replaying it; else it comes back, untrusted_publisher).
                copy = _copy_of(
                    message,
                    _headers_without(message.headers, ("x-death", *_DEAD_LETTER_HEADERS)),
                    routing_key=routing_key,
                    user_id=self._user,
                )
                # Confirmed (and routed: mandatory) before the dead letter is removed.
                await exchange.publish(
                    copy, routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT_SECONDS
                )
                await message.ack()
                replayed += 1
            await _give_back(kept, channel, dlq.name)
        return replayed

    async def dead_letter_depth(self, queue: str) -> int:
        """Messages in ``queue``'s dead-letter queue now (one passive declare, for /metrics)."""
        async with self._dead_letter_queue(queue) as (_, count, _):
            return count

    async def purge(self, queue: str, message_ids: Sequence[str] | None) -> int:
        async with self._dead_letter_queue(queue) as (dlq, count, channel):
            if message_ids is None:
                result = await dlq.purge()
                return int(getattr(result, "message_count", 0) or 0)
            wanted, purged = set(message_ids), 0
            kept: list[AbstractIncomingMessage] = []
            async for message in _scan(dlq, count, kept):
                if message.message_id in wanted:
                    await message.ack()
                    purged += 1
                else:
                    kept.append(message)
            await _give_back(kept, channel, dlq.name)
        return purged

    @contextlib.asynccontextmanager
    async def _dead_letter_queue(
        self, queue: str
    ) -> AsyncIterator[tuple[AbstractQueue, int, AbstractChannel]]:
        """The dead-letter queue of consuming queue ``queue``, the number of messages in
        it now, and the channel (confirming) it was opened on; closed on the way out."""
        spec = _queue_spec(queue)
        if self._connection is None:
            raise RuntimeError("bus not started")
        channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            dlq = await channel.declare_queue(spec.dead_letter_queue, passive=True)
            result = dlq.declaration_result
            yield dlq, int(result.message_count or 0), channel
        finally:
            await channel.close()


async def _scan(
    dlq: AbstractQueue, count: int, kept: list[AbstractIncomingMessage] | None = None
) -> AsyncIterator[AbstractIncomingMessage]:
    """Each dead letter of ``dlq`` once, taken with basic.get and held unacknowledged
    (the caller settles each; those it leaves go back when it is done), so none comes
    twice. ``count``, the depth a passive declare read when the operation began, is a
    floor, not a bound:

    - A busy broker answers a quorum queue's depth 0 when its query times out
      (``rabbit_quorum_queue:stat``), where a basic.get, which goes through the queue's
      log, still gives the messages: the scan asks until the queue answers empty.
    - An empty answer before ``count`` letters came is asked again until a deadline: a
      letter an earlier operation gave back may not be ready yet (a quorum queue requeues
      it a moment later, later on a busy broker).
    - For a replay or a purge (``kept`` given), a letter past ``count`` whose id came
      already (a replayed one that failed again and is back), or that has no id, ends the
      scan: it is put in ``kept``, to be given back. A listing holds every letter it took,
      so none can come back during it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _REQUEUE_WAIT_SECONDS
    seen: set[str] = set()
    taken = 0
    while True:
        message = await dlq.get(no_ack=False, fail=False)
        if message is None:
            if taken >= count or loop.time() >= deadline:
                return
            await asyncio.sleep(0.02)
            continue
        taken += 1
        back = not message.message_id or message.message_id in seen
        if kept is not None and taken > count and back:
            kept.append(message)
            return
        if message.message_id:
            seen.add(message.message_id)
        yield message


async def _give_back(
    messages: Sequence[AbstractIncomingMessage], channel: AbstractChannel, name: str
) -> None:
    """Return the dead letters a replay or a purge looked at and left, and wait until they
    are ready again: left to the channel's close, they came back a moment after the call
    returned, and a listing right after it found the queue empty."""
    if not messages:
        return
    for message in messages:
        await message.nack(requeue=True)
    await _until_ready(channel, name, len(messages))


async def _until_ready(channel: AbstractChannel, name: str, count: int) -> None:
    """Wait (briefly, bounded) until ``count`` messages are ready in queue ``name`` again:
    the messages a listing gave back are requeued by the broker a moment later, and a
    listing must leave the queue as it found it for whoever looks next."""
    deadline = asyncio.get_running_loop().time() + _REQUEUE_WAIT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        queue = await channel.declare_queue(name, passive=True)
        if int(queue.declaration_result.message_count or 0) >= count:
            return
        await asyncio.sleep(0.02)
    log.warning("dead letters given back not ready yet", queue=name, expected=count)


# A quorum queue requeues what a nack gave back a moment later (longer on a busy broker).
_REQUEUE_WAIT_SECONDS = 15.0


def _origin_headers(event: Event) -> dict[str, Any] | None:
    headers: dict[str, Any] = dict(origin_headers(event))
    return headers or None


def _queue_spec(name: str) -> QueueSpec:
    for spec in ALL_QUEUES:
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in ALL_QUEUES)
    raise ValueError(f"unknown queue {name!r} (one of: {known})")


def _runs(events: Sequence[Event], most: int) -> list[list[Event]]:
    """The events in order, cut into messages: consecutive events of one name, at most
    ``most`` of them and ``MAX_BATCH_BYTES`` of payload each (an event alone, whatever its
    size, is a message of its own). Order holds within a queue: a run never passes
    another."""
    runs: list[list[Event]] = []
    size = 0
    for event in events:
        weight = len(orjson.dumps(event.data))
        run = runs[-1] if runs else None
        if (
            run is None
            or run[0].name != event.name
            or len(run) >= most
            or size + weight > MAX_BATCH_BYTES
        ):
            runs.append([event])
            size = weight
        else:
            run.append(event)
            size += weight
    return runs


def _headers_without(headers: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in (headers or {}).items() if k not in names}


def _copy_of(
    message: AbstractIncomingMessage,
    headers: dict[str, Any],
    *,
    routing_key: str | None = None,
    user_id: str | None = None,
) -> aio_pika.Message:
    """The message as published again: same body, id, type and content type; persistent;
    ``user_id`` only when given (the broker refuses one that is not the connection's user).
    A message without an id gets the one the inbox knows it by (``delivery_id``, from the
    routing key it was first published with: ``routing_key``, else the message's own):
    left empty, the client library would give the copy a random one."""
    return aio_pika.Message(
        message.body,
        headers=headers,
        message_id=delivery_id(
            message.body,
            message_id=message.message_id,
            routing_key=routing_key or message.routing_key,
        ),
        type=message.type,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        app_id=message.app_id,
        user_id=user_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def _text(value: object) -> str | None:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return None if value is None else str(value)


def _first_death(message: AbstractIncomingMessage) -> Mapping[str, Any]:
    """The broker's record of the first time it dead-lettered the message, if it did."""
    deaths = (message.headers or {}).get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], Mapping):
        return cast(Mapping[str, Any], deaths[-1])
    return {}


def _original_routing_key(message: AbstractIncomingMessage) -> str | None:
    headers = message.headers or {}
    if headers.get(ROUTING_KEY_HEADER):
        return _text(headers[ROUTING_KEY_HEADER])
    keys = _first_death(message).get("routing-keys")
    if isinstance(keys, list) and keys:
        return _text(keys[0])
    return None


def _dead_letter_of(queue: str, message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    reason = _text(headers.get(REASON_HEADER))
    if reason is None and (death := _first_death(message)):
        reason = f"broker: {_text(death.get('reason'))}"
    return DeadLetter(
        queue=queue,
        message_id=message.message_id,
        routing_key=_original_routing_key(message),
        body=message.body,
        reason=reason,
        user_id=_text(headers.get(USER_ID_HEADER)) or message.user_id,
    )

"""``_publish_pipelined`` over a fake of the aiormq channel internals it uses: a round is
one write holding every message's frames, each message its own delivery tag and
confirmation; a round cut off before its write leaves the channel as it was."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import aiormq
import pamqp.frame
import pytest
from aiormq import spec
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from orderstack.messaging.envelope import Event, encode
from orderstack.messaging.rabbitmq import RabbitMQBus, _pipelining, _publish_pipelined


class FakeChannel:
    """What of ``aiormq.Channel`` the pipelined publish touches."""

    def __init__(self, room: int = 0) -> None:
        self.number, self.delivery_tag = 3, 7
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.message_id_delivery_tag: dict[str, int] = {}
        self.write_queue: asyncio.Queue[ChannelFrame] = asyncio.Queue(maxsize=room)
        self.publisher_confirms = True

    @property
    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        yield

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _split_body(self, body: bytes) -> list[ContentBody]:
        return [ContentBody(body)]


def _messages(n: int) -> list[tuple[bytes, str, Any, bool]]:
    bus = RabbitMQBus("amqp://x")
    events = [Event("order.created", {"orderId": i}) for i in range(n)]
    return [(encode(e), e.name, bus._properties([e]), True) for e in events]


def _frames(payload: bytes) -> list[Any]:
    frames, offset = [], 0
    while offset < len(payload):
        used, channel, frame = pamqp.frame.unmarshal(payload[offset:])
        assert channel == 3
        frames.append(frame)
        offset += used
    return frames


async def test_a_round_is_one_write_of_each_message_as_basic_publish_frames_it() -> None:
    channel, messages = FakeChannel(), _messages(3)

    publishing = asyncio.create_task(
        _publish_pipelined(cast(aiormq.Channel, channel), "order.exchange", messages)
    )
    written = await channel.write_queue.get()
    assert channel.write_queue.empty()  # one write for the round
    frames = _frames(written.payload)
    assert len(frames) == 9
    for (body, key, properties, mandatory), (publish, header, content) in zip(
        messages, zip(frames[::3], frames[1::3], frames[2::3], strict=True), strict=True
    ):
        assert isinstance(publish, spec.Basic.Publish)
        assert (publish.exchange, publish.routing_key, publish.mandatory) == (
            "order.exchange",
            key,
            mandatory,
        )
        assert isinstance(header, ContentHeader) and header.body_size == len(body)
        assert header.properties == properties
        assert content.value == body
    assert list(channel.confirmations) == [8, 9, 10]
    ids = [m[2].message_id for m in messages]
    assert channel.message_id_delivery_tag == dict(zip(ids, [8, 9, 10], strict=True))

    # The broker's answers, as aiormq's reader sets them: an ack, a nack, an ack.
    channel.confirmations.pop(8).set_result(spec.Basic.Ack(delivery_tag=8))
    returned = aiormq.exceptions.DeliveryError(None, spec.Basic.Nack(delivery_tag=9))
    channel.confirmations.pop(9).set_exception(returned)
    channel.confirmations.pop(10).set_result(spec.Basic.Ack(delivery_tag=10))
    results = await publishing
    assert [type(r) for r in results] == [spec.Basic.Ack, type(returned), spec.Basic.Ack]
    assert channel.delivery_tag == 10
    assert channel.message_id_delivery_tag == {}


async def test_a_round_cut_off_before_its_write_leaves_the_channel_as_it_was() -> None:
    channel = FakeChannel(room=1)
    channel.write_queue.put_nowait(ChannelFrame(payload=b"", should_close=False))  # full

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await _publish_pipelined(cast(aiormq.Channel, channel), "x", _messages(4))

    assert channel.delivery_tag == 7
    assert channel.confirmations == {}
    assert channel.message_id_delivery_tag == {}
    assert channel.write_queue.qsize() == 1


async def test_only_a_confirming_aiormq_channel_and_messages_with_ids_are_pipelined() -> None:
    messages = _messages(2)
    assert not _pipelining(cast(aiormq.Channel, FakeChannel()), messages)  # not aiormq's
    real = object.__new__(aiormq.Channel)
    real.publisher_confirms = True
    assert _pipelining(real, messages)
    real.publisher_confirms = False
    assert not _pipelining(real, messages)
    real.publisher_confirms = True
    messages[1][2].message_id = None
    assert not _pipelining(real, messages)

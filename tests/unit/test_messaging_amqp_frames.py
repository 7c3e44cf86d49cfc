"""messaging/amqp_frames.py writes a published message's frames byte for byte as pamqp
marshals them (and as aiormq splits a body): the bus's own properties, every property
kind, values it leaves to pamqp, bodies of every size around the frame limit."""

from __future__ import annotations

import datetime
import random
from typing import Any

import pamqp.frame
import pytest
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from orderstack.messaging.amqp_frames import body_frames, header_frame, publish_frame
from orderstack.messaging.envelope import Event, encode
from orderstack.messaging.rabbitmq import RabbitMQBus

Properties = commands.Basic.Properties


def _pamqp_header(channel: int, size: int, properties: Properties) -> bytes:
    return pamqp.frame.marshal(ContentHeader(properties=properties, body_size=size), channel)


@pytest.mark.parametrize(
    "event",
    [
        Event("order.created", {"orderId": 1}),
        Event("order.created", {"orderId": 1}, request_id="req-1"),
        Event(
            "order.qty_confirmed",
            {"orderId": 2},
            request_id="r" * 128,
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        Event("order.cancelled", {"orderId": 3}, id="é-ünïcode-id", request_id="ß"),
    ],
)
@pytest.mark.parametrize("user", ["guest", "os_it_1234abcd_orders", "üser"])
def test_the_bus_s_own_messages_are_framed_as_pamqp_frames_them(
    event: Event, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = RabbitMQBus(f"amqp://{user}:x@localhost/")
    for run in ([event], [event, event]):  # one event, and a batch message
        properties = bus._properties(run)
        body = encode(event)
        for channel in (1, 2, 65535):
            with monkeypatch.context() as patched:  # written here, never left to pamqp
                patched.setattr(pamqp.frame, "marshal", None)
                framed = header_frame(channel, len(body), properties)
            assert framed == _pamqp_header(channel, len(body), properties)


def test_every_property_kind_is_framed_as_pamqp_frames_it() -> None:
    rng = random.Random(25)
    text = ["", "a", "application/json", "ü" * 10, "x" * 255]
    names = list(Properties.__slots__)
    for _ in range(2000):
        values: dict[str, Any] = {}
        for name in rng.sample(names, rng.randint(0, len(names))):
            kind = getattr(Properties, "_" + name)
            if kind == "shortstr":
                values[name] = rng.choice(text)
            elif name == "delivery_mode":
                values[name] = rng.choice([1, 2])  # pamqp takes no other
            elif kind == "octet":
                values[name] = rng.choice([0, 1, 9, 255])
            elif kind == "table":
                values[name] = rng.choice(
                    [{}, {"x-request-id": "r-1"}, {"b": "2", "a": "1", "ü": "é" * 300}]
                )
            elif kind == "timestamp":
                values[name] = datetime.datetime(2026, 12, 5, 18, 0, tzinfo=datetime.UTC)
        if "cluster_id" in values:
            del values["cluster_id"]  # deprecated: pamqp refuses a value
        properties = Properties(**values)
        size = rng.choice([0, 1, 300, 2**40])
        assert header_frame(7, size, properties) == _pamqp_header(7, size, properties), values


@pytest.mark.parametrize(
    "headers",
    [
        {"n": 1},  # an integer
        {"t": True},
        {"nested": {"a": "b"}},
        {"list": ["a"]},
        {"bytes": bytearray(b"x")},
        {"k" * 129: "long key"},  # pamqp cuts it to 128 bytes
    ],
)
def test_values_it_does_not_write_are_left_to_pamqp(headers: dict[str, Any]) -> None:
    properties = Properties(message_id="m", headers=headers, delivery_mode=2)
    assert header_frame(1, 10, properties) == _pamqp_header(1, 10, properties)


def test_a_short_string_past_255_bytes_is_refused_as_pamqp_refuses_it() -> None:
    properties = Properties(message_id="é" * 200)
    with pytest.raises(TypeError):
        _pamqp_header(1, 1, properties)
    with pytest.raises(TypeError):
        header_frame(1, 1, properties)


@pytest.mark.parametrize("mandatory", [True, False])
@pytest.mark.parametrize("routing_key", ["order.created", "product_created", "", "ü" * 40])
def test_the_publish_frame_is_pamqp_s(routing_key: str, mandatory: bool) -> None:
    for channel in (1, 300):
        expected = pamqp.frame.marshal(
            commands.Basic.Publish(
                exchange="order.exchange", routing_key=routing_key, mandatory=mandatory
            ),
            channel,
        )
        assert publish_frame(channel, "order.exchange", routing_key, mandatory) == expected


def test_a_routing_key_past_255_characters_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        publish_frame(1, "order.exchange", "k" * 256, True)


def _aiormq_split(body: bytes, most: int) -> list[bytes]:
    """aiormq's Channel._split_body, each part marshalled by pamqp."""
    if not body:
        return []
    parts = [body] if len(body) < most else [body[i : i + most] for i in range(0, len(body), most)]
    return [pamqp.frame.marshal(ContentBody(part), 5) for part in parts]


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 199, 200, 201, 1000])
def test_a_body_is_split_and_framed_as_aiormq_and_pamqp_do(size: int) -> None:
    body = bytes(random.Random(size).randbytes(size))
    assert body_frames(5, body, 100) == _aiormq_split(body, 100)

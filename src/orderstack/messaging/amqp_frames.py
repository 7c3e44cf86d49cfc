"""The frames of a published message, marshalled byte for byte as pamqp marshals them,
for the RabbitMQ bus's pipelined publish (messaging/rabbitmq.py): the Basic.Publish
method frame, the same for every message of one routing key, marshalled once and
reused; the content header of the properties the bus sets (short strings, the delivery
mode, headers of text values) written directly, some six times cheaper than pamqp's
generic encoder. Properties of any other kind, or values it does not write, go to pamqp
(``header_frame`` returns what pamqp's ``frame.marshal`` does, whichever way).
tests/unit/test_messaging_amqp_frames.py holds the two byte-equal over many cases."""

from __future__ import annotations

import functools
import struct
from typing import Any

import pamqp.frame
from pamqp import commands
from pamqp.header import ContentHeader

_FRAME = struct.Struct(">BHI")  # type, channel, payload size
_HEADER_START = struct.Struct(">HxxQH")  # class id, weight, body size, property flags
_LONG = struct.Struct(">I")
_FRAME_HEADER = 2
_FRAME_BODY = 3
_FRAME_END = b"\xce"
_BASIC = commands.Basic.frame_id

# Basic.Properties in wire order: (name, flag, kind). Kinds written here: "shortstr",
# "octet", "table" (text values only); "timestamp" always goes to pamqp.
_PROPERTIES: tuple[tuple[str, int, str], ...] = tuple(
    (
        name,
        commands.Basic.Properties.flags[name],
        getattr(commands.Basic.Properties, "_" + name),
    )
    for name in commands.Basic.Properties.__slots__
)


@functools.lru_cache(maxsize=256)
def publish_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The Basic.Publish method frame, marshalled (cached: the same for every message of
    one routing key on one channel; the bus's routing keys are its events' names)."""
    if len(routing_key) > 255:
        raise ValueError("Routing key too long (max 255 bytes)")
    publish = commands.Basic.Publish(
        exchange=exchange, routing_key=routing_key, mandatory=mandatory
    )
    return pamqp.frame.marshal(publish, channel)


def _short(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    data = value.encode("utf-8")
    return bytes((len(data),)) + data if len(data) <= 255 else None


def _table(value: Any) -> bytes | None:
    """A field table of text values, keys sorted (as pamqp writes it); None for any other."""
    if not isinstance(value, dict):
        return None
    parts = []
    for key, item in sorted(value.items()):
        if not isinstance(key, str) or not isinstance(item, str):
            return None
        name = key.encode("utf-8")
        if len(name) > 128:
            return None
        data = item.encode("utf-8")
        parts.append(bytes((len(name),)) + name + b"S" + _LONG.pack(len(data)) + data)
    content = b"".join(parts)
    return _LONG.pack(len(content)) + content


def header_frame(channel: int, body_size: int, properties: commands.Basic.Properties) -> bytes:
    """The content header frame of a message of ``body_size`` bytes with ``properties``
    on ``channel``: what ``pamqp.frame.marshal(ContentHeader(...), channel)`` returns."""
    flags = 0
    parts: list[bytes] = []
    for name, flag, kind in _PROPERTIES:
        value = getattr(properties, name)
        if value is None or value == "":  # as pamqp: absent
            continue
        encoded: bytes | None
        if kind == "shortstr":
            encoded = _short(value)
        elif kind == "octet":
            encoded = bytes((value,)) if type(value) is int and 0 <= value <= 255 else None
        elif kind == "table":
            encoded = _table(value) if value else b"\x00\x00\x00\x00"
        else:
            encoded = None
        if encoded is None:  # not one this writes: pamqp's own encoder
            return pamqp.frame.marshal(
                ContentHeader(properties=properties, body_size=body_size), channel
            )
        flags |= flag
        parts.append(encoded)
    payload = _HEADER_START.pack(_BASIC, body_size, flags) + b"".join(parts)
    return _FRAME.pack(_FRAME_HEADER, channel, len(payload)) + payload + _FRAME_END


def body_frames(channel: int, body: bytes, most: int) -> list[bytes]:
    """The content body frames of ``body``, ``most`` bytes each at most (aiormq's
    ``max_content_size``: the connection's frame_max less a frame's overhead), as aiormq
    splits a body and pamqp marshals each part; none for an empty body."""
    if not body:
        return []
    return [
        _FRAME.pack(_FRAME_BODY, channel, len(part)) + part + _FRAME_END
        for part in (body[i : i + most] for i in range(0, len(body), most))
    ]

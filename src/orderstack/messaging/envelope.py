"""The one codec for events on the wire.

Body: the seed's NestJS envelope ``{"pattern": <event name>, "data": <payload>}``; a bare
payload is accepted on the way in. The AMQP properties carry the event id (``message_id``),
the name (``type``) and ``content_type``; the headers ``x-request-id`` and ``traceparent``
its origin (``origin_headers``, ``decode``), when it has one.

Between this project's services, several events of one name may travel in one message,
when its publisher is told to (``EVENT_BATCH_SIZE``, messaging/rabbitmq.py): content type
``BATCH_CONTENT_TYPE``, body ``{"pattern": <name>, "batch": [{"id", "data",
"x-request-id"?, "traceparent"?}, ...]}``. A consumer takes each of them as the message of
its own it would otherwise have been (``batch_members``): claimed, applied, acknowledged
and dead-lettered one by one. A seed consumer reads one event per message only, which is
why a publisher sends one unless told otherwise.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from orderstack.logging import valid_request_id

MAX_EVENT_BYTES = 64 * 1024
BATCH_CONTENT_TYPE = "application/vnd.orderstack.batch+json"
_INBOX_NAMESPACE = uuid.UUID("0f7d3c52-6f0a-4be4-9b8e-7a4f3b1b6a11")


class MalformedEvent(ValueError):
    """The message cannot be decoded into an event; it belongs in the dead-letter queue."""


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Where it comes from, carried beside the body (the outbox row's columns, the AMQP
    # headers ``x-request-id`` and ``traceparent``), never part of what it says: the
    # request id of the request that caused it and the W3C traceparent of its span.
    request_id: str | None = field(default=None, compare=False)
    traceparent: str | None = field(default=None, compare=False)


def encode(event: Event) -> bytes:
    return orjson.dumps({"pattern": event.name, "data": event.data})


REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"
_MAX_ORIGIN_CHARS = 128  # the outbox columns' width; a longer header is not ours: ignored


def origin_headers(event: Event) -> dict[str, str]:
    """The headers that carry the event's origin (none for an event without)."""
    headers = {}
    if event.request_id:
        headers[REQUEST_ID_HEADER] = event.request_id
    if event.traceparent:
        headers[TRACEPARENT_HEADER] = event.traceparent
    return headers


def _header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A header of origin as an incoming message carries it, or None when it is absent or
    not what it must be: the request id by the rule of the HTTP ``X-Request-ID`` (printable
    ASCII, no space or control character: it goes into log lines and answers), the
    traceparent by the W3C form. A message is never refused for it; the value is dropped."""
    value = (headers or {}).get(name)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str) or not value or len(value) > _MAX_ORIGIN_CHARS:
        return None
    if name == TRACEPARENT_HEADER:
        return value if _TRACEPARENT.fullmatch(value) else None
    return valid_request_id(value)


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def decode(
    body: bytes,
    *,
    message_id: str | None,
    routing_key: str | None,
    headers: Mapping[str, Any] | None = None,
) -> Event:
    """Decode a delivery; raise MalformedEvent when it is not a JSON object event.

    A message without a ``message_id`` (a seed service publishing) gets a deterministic id
    derived from its name and body, so that an identical redelivery is still recognised.
    """
    if len(body) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"event of {len(body)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent("body is not JSON") from exc
    if not isinstance(doc, dict):
        raise MalformedEvent("body is not a JSON object")
    if isinstance(doc.get("pattern"), str) and "data" in doc:
        name, data = doc["pattern"], doc["data"]
    else:
        name, data = routing_key or "", doc
    if not name:
        raise MalformedEvent("event has no name")
    if not isinstance(data, dict):
        raise MalformedEvent("event payload is not a JSON object")
    event_id = message_id or str(uuid.uuid5(_INBOX_NAMESPACE, name + "\0" + body.decode("utf-8")))
    if len(event_id) > 64:
        raise MalformedEvent("message_id longer than 64 characters")
    return Event(
        name=name,
        data=data,
        id=event_id,
        request_id=_header(headers, REQUEST_ID_HEADER),
        traceparent=_header(headers, TRACEPARENT_HEADER),
    )


def delivery_id(body: bytes, *, message_id: str | None, routing_key: str | None) -> str:
    """The id a delivery is known by: its ``message_id``, else the id ``decode`` derives
    from its name and body (a seed service publishes none). A dead-letter copy carries it,
    so that a replay of a message without an id of its own is still recognised by the
    inbox; a body that is no event gets one derived from its routing key and bytes."""
    if message_id:
        return message_id
    try:
        return decode(body, message_id=None, routing_key=routing_key).id
    except MalformedEvent:
        text = (routing_key or "") + "\0" + body.decode("utf-8", "replace")
        return str(uuid.uuid5(_INBOX_NAMESPACE, text))


@dataclass(frozen=True, slots=True)
class BatchMember:
    """One event of a batch message, as the message of its own it would have been: its
    body (``encode``), id and origin headers."""

    body: bytes
    message_id: str | None
    headers: dict[str, str]


def encode_batch(events: Sequence[Event]) -> bytes:
    """The body of one message carrying ``events``, all of one name, in their order."""
    items: list[dict[str, Any]] = []
    for event in events:
        item: dict[str, Any] = {"id": event.id, "data": event.data}
        item.update(origin_headers(event))
        items.append(item)
    return orjson.dumps({"pattern": events[0].name, "batch": items})


def batch_members(body: bytes) -> list[BatchMember] | None:
    """The events of a batch message's body, each as its own message would carry it; None
    when the body is no batch (not JSON, no name, no list of events): the message is then
    taken whole, and dead-lettered as any undecodable one. An item that is no event (no
    object, a payload that is no object, an id past 64 characters) is still a member:
    ``decode`` refuses it, and it alone is dead-lettered."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    name, items = doc.get("pattern"), doc.get("batch")
    if not isinstance(name, str) or not name or not isinstance(items, list) or not items:
        return None
    members: list[BatchMember] = []
    for item in items:
        if not isinstance(item, dict):
            members.append(BatchMember(orjson.dumps(item), None, {}))
            continue
        event_id = item.get("id")
        headers = {
            key: value
            for key in (REQUEST_ID_HEADER, TRACEPARENT_HEADER)
            if isinstance(value := item.get(key), str)
        }
        members.append(
            BatchMember(
                orjson.dumps({"pattern": name, "data": item.get("data")}),
                event_id if isinstance(event_id, str) and event_id else None,
                headers,
            )
        )
    return members

"""The one envelope codec: the seed's ``{"pattern", "data"}`` on the wire, bare payloads in."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import orjson
import pytest

from orderstack.messaging.envelope import (
    MAX_EVENT_BYTES,
    Event,
    MalformedEvent,
    decode,
    delivery_id,
    encode,
)
from orderstack.messaging.rabbitmq import _copy_of

PAYLOAD = {"orderId": 1, "productId": 2, "totalPrice": 15.5, "timestamp": "2025-09-20T10:30:00Z"}


def test_encode_writes_the_seed_envelope() -> None:
    event = Event("order.created", PAYLOAD)

    assert orjson.loads(encode(event)) == {"pattern": "order.created", "data": PAYLOAD}


def test_new_events_get_unique_uuid_ids() -> None:
    ids = {Event("order.created", PAYLOAD).id for _ in range(100)}

    assert len(ids) == 100
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_encoded_event_decodes_to_the_same_event() -> None:
    event = Event("order.created", PAYLOAD)

    assert decode(encode(event), message_id=event.id, routing_key=event.name) == event


def test_seed_envelope_wins_over_the_routing_key() -> None:
    body = orjson.dumps({"pattern": "order.qty_confirmed", "data": {"orderId": 5}})

    event = decode(body, message_id="m-1", routing_key="something.else")

    assert (event.name, event.data, event.id) == ("order.qty_confirmed", {"orderId": 5}, "m-1")


def test_bare_payload_is_named_by_its_routing_key() -> None:
    event = decode(orjson.dumps(PAYLOAD), message_id="m-1", routing_key="order.created")

    assert (event.name, event.data) == ("order.created", PAYLOAD)


def test_payload_with_a_non_text_pattern_is_a_bare_payload() -> None:
    doc = {"pattern": 5, "data": {}, "orderId": 1}

    event = decode(orjson.dumps(doc), message_id="m", routing_key="order.qty_failed")

    assert (event.name, event.data) == ("order.qty_failed", doc)


def test_message_without_id_gets_an_id_derived_from_its_content() -> None:
    body = orjson.dumps({"pattern": "order.created", "data": PAYLOAD})
    other = orjson.dumps({"pattern": "order.created", "data": {**PAYLOAD, "orderId": 2}})

    first = decode(body, message_id=None, routing_key="order.created")
    redelivered = decode(body, message_id=None, routing_key="order.created")
    different = decode(other, message_id=None, routing_key="order.created")

    assert first.id == redelivered.id
    assert first.id != different.id
    assert len(first.id) <= 64


def test_empty_message_id_counts_as_missing() -> None:
    body = orjson.dumps(PAYLOAD)

    assert (
        decode(body, message_id="", routing_key="order.created").id
        == decode(body, message_id=None, routing_key="order.created").id
    )


def test_same_body_under_another_name_gets_another_derived_id() -> None:
    body = orjson.dumps({"orderId": 1})

    confirmed = decode(body, message_id=None, routing_key="order.qty_confirmed")
    failed = decode(body, message_id=None, routing_key="order.qty_failed")

    assert confirmed.id != failed.id


@pytest.mark.parametrize(
    ("body", "routing_key", "problem"),
    [
        pytest.param(b"not json", "order.created", "not JSON", id="non-JSON"),
        pytest.param(b"", "order.created", "not JSON", id="empty body"),
        pytest.param(b"\xff\xfe{}", "order.created", "not JSON", id="not UTF-8"),
        pytest.param(b"[1, 2]", "order.created", "not a JSON object", id="array"),
        pytest.param(b'"text"', "order.created", "not a JSON object", id="string"),
        pytest.param(b"42", "order.created", "not a JSON object", id="number"),
        pytest.param(b"null", "order.created", "not a JSON object", id="null"),
        pytest.param(b'{"orderId": 1}', None, "no name", id="bare payload, no routing key"),
        pytest.param(b'{"orderId": 1}', "", "no name", id="bare payload, empty routing key"),
        pytest.param(b'{"pattern": "", "data": {}}', None, "no name", id="empty pattern"),
        pytest.param(
            b'{"pattern": "order.created", "data": [1]}',
            "order.created",
            "payload is not a JSON object",
            id="data not an object",
        ),
        pytest.param(
            b'{"pattern": "order.created", "data": null}',
            "order.created",
            "payload is not a JSON object",
            id="data null",
        ),
    ],
)
def test_undecodable_message_is_malformed(
    body: bytes, routing_key: str | None, problem: str
) -> None:
    with pytest.raises(MalformedEvent, match=problem):
        decode(body, message_id="m", routing_key=routing_key)


def test_oversized_body_is_malformed() -> None:
    padding = "x" * MAX_EVENT_BYTES
    body = orjson.dumps({"pattern": "order.created", "data": {**PAYLOAD, "pad": padding}})

    with pytest.raises(MalformedEvent, match="exceeds"):
        decode(body, message_id="m", routing_key="order.created")


def test_body_at_the_size_limit_is_accepted() -> None:
    skeleton = orjson.dumps({"pad": ""})
    body = orjson.dumps({"pad": "x" * (MAX_EVENT_BYTES - len(skeleton))})
    assert len(body) == MAX_EVENT_BYTES

    assert decode(body, message_id="m", routing_key="order.created").name == "order.created"


def test_message_id_longer_than_the_inbox_column_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="message_id"):
        decode(orjson.dumps(PAYLOAD), message_id="m" * 65, routing_key="order.created")


def test_a_delivery_without_id_is_known_by_the_id_the_inbox_derives() -> None:
    # A dead-letter copy carries this id, so a replay of a seed message (no message_id)
    # is recognised by the inbox like the original would have been.
    body = b'{"pattern": "order.created", "data": {"orderId": 1, "productId": 2}}'
    derived = decode(body, message_id=None, routing_key="order.created").id
    assert delivery_id(body, message_id=None, routing_key="order.created") == derived
    assert delivery_id(body, message_id="m-1", routing_key="order.created") == "m-1"
    malformed = delivery_id(b"not json", message_id=None, routing_key="order.created")
    assert malformed == delivery_id(b"not json", message_id=None, routing_key="order.created")
    assert malformed != delivery_id(b"not json!", message_id=None, routing_key="order.created")


def _incoming(body: bytes, routing_key: str) -> SimpleNamespace:
    """What ``_copy_of`` reads of an incoming AMQP message without a ``message_id``."""
    return SimpleNamespace(
        body=body,
        message_id=None,
        routing_key=routing_key,
        type=None,
        content_type="application/json",
        content_encoding=None,
        correlation_id=None,
        timestamp=None,
        app_id=None,
    )


def test_the_dead_letter_copy_of_a_message_without_id_carries_the_derived_id() -> None:
    original = _incoming(b'{"orderId": 1}', "order.created")
    copy = _copy_of(original, {})  # type: ignore[arg-type]
    assert copy.message_id == delivery_id(
        original.body, message_id=None, routing_key="order.created"
    )


def test_a_replayed_dead_letter_is_known_by_its_first_routing_key() -> None:
    # In the dead-letter queue a message's routing key is the queue's name; the id the
    # inbox knows a bare seed payload by comes from the key it was first published with.
    dead = _incoming(b'{"orderId": 1, "productId": 2}', "product-service.events.dlq")
    copy = _copy_of(dead, {}, routing_key="order.created")  # type: ignore[arg-type]
    inbox_id = decode(dead.body, message_id=None, routing_key="order.created").id
    assert copy.message_id == inbox_id

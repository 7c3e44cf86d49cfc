"""The batch message's codec (messaging/envelope.py): each event of a batch comes out as the
message of its own it would have been, and what is no event in it is refused alone."""

from __future__ import annotations

import orjson
import pytest

from orderstack.messaging.envelope import (
    Event,
    MalformedEvent,
    batch_members,
    decode,
    encode,
    encode_batch,
)


def _decoded(body: bytes) -> list[Event]:
    members = batch_members(body)
    assert members is not None
    return [
        decode(m.body, message_id=m.message_id, routing_key="order.created", headers=m.headers)
        for m in members
    ]


def test_each_event_of_a_batch_comes_out_as_its_own_message_would() -> None:
    events = [
        Event("order.created", {"orderId": 1}, request_id="req-1", traceparent=None),
        Event(
            "order.created",
            {"orderId": 2},
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        Event("order.created", {"orderId": 3}),
    ]
    members = batch_members(encode_batch(events))

    assert members is not None
    assert [m.body for m in members] == [encode(e) for e in events]
    decoded = _decoded(encode_batch(events))
    assert decoded == events  # name, data and id
    assert [(e.request_id, e.traceparent) for e in decoded] == [
        (e.request_id, e.traceparent) for e in events
    ]


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"batch": [{"id": "a", "data": {}}]}', b'{"pattern": "x", "batch": []}'],
)
def test_a_body_that_is_no_batch_has_no_members(body: bytes) -> None:
    assert batch_members(body) is None


def test_an_item_that_is_no_event_is_refused_alone() -> None:
    body = orjson.dumps(
        {
            "pattern": "order.created",
            "batch": [
                {"id": "a", "data": {"orderId": 1}},
                "junk",
                {"id": "c", "data": [1, 2]},
                {"id": "d" * 65, "data": {"orderId": 4}},
            ],
        }
    )
    members = batch_members(body)
    assert members is not None and len(members) == 4

    first = decode(members[0].body, message_id=members[0].message_id, routing_key=None)
    assert (first.id, first.data) == ("a", {"orderId": 1})
    for member, why in zip(
        members[1:],
        ["body is not a JSON object", "payload is not a JSON object", "longer than 64"],
        strict=True,
    ):
        with pytest.raises(MalformedEvent, match=why):
            decode(member.body, message_id=member.message_id, routing_key="order.created")

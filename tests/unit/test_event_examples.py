"""The examples each event declares (shown in the AsyncAPI documents) are payloads its
publisher may write and its consumers take, and the documents carry them with the event's
version."""

from __future__ import annotations

from typing import Any

import pytest

from orderstack.events import EVENTS, EventType
from orderstack.messaging.asyncapi import asyncapi_document
from orderstack.messaging.topology import QueueSpec

WITH_EXAMPLES = [e for e in EVENTS if (e.payload.model_config.get("json_schema_extra") or {})]


def examples(event: EventType) -> list[dict[str, Any]]:
    extra = event.payload.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    found = extra["examples"]
    assert isinstance(found, list) and found
    return found


def test_every_order_event_has_examples() -> None:
    assert {e.name for e in WITH_EXAMPLES} >= {
        "order.created",
        "order.cancelled",
        "order.qty_confirmed",
        "order.qty_failed",
    }


@pytest.mark.parametrize("event", WITH_EXAMPLES, ids=lambda e: e.name)
def test_each_example_is_what_the_publisher_writes_and_what_consumers_read(
    event: EventType,
) -> None:
    for example in examples(event):
        written = event.payload.model_validate(example)
        assert written.model_dump(exclude_none=True) == example  # nothing dropped or added
        if event.reads is not None:
            event.reads.model_validate(example)


def test_a_multi_line_example_and_a_one_line_one_of_order_created() -> None:
    [created] = [e for e in EVENTS if e.name == "order.created"]
    shapes = {("productId" in ex, len(ex["items"]) > 1) for ex in examples(created)}
    assert shapes == {(True, False), (False, True)}


@pytest.mark.parametrize("event", WITH_EXAMPLES, ids=lambda e: e.name)
def test_the_asyncapi_message_carries_the_examples_and_the_version(event: EventType) -> None:
    queue = QueueSpec(name="q", routing_keys=())
    document = asyncapi_document(
        title="t", version="1", queue=queue, publishes=[event], consumes=[]
    )
    message = document["components"]["messages"][event.name]
    assert message["x-event-version"] == event.version
    assert [m["payload"] for m in message["examples"]] == [
        {"pattern": event.name, "data": example} for example in examples(event)
    ]

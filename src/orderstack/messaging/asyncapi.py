"""A service's events as an AsyncAPI 3.0 document, generated from their declarations.

The service passes the declarations of the events it publishes and consumes
(orderstack/events.py: ``published_by``, ``consumed_by``): each one's ``payload`` model is
what it sends, its ``reads`` model what it receives; the envelope, the headers and the
topology come from this package. Their
JSON Schemas are pydantic's (``models_json_schema``), with every definition moved to
``components/schemas``. The document describes, for that one service:

- ``servers``: the RabbitMQ broker (AMQP 0-9-1);
- ``channels``: one per routing key on the topic exchange ``order.exchange`` for each event
  the service sends or receives, its own queue (the events it receives) and that queue's
  dead-letter queue;
- ``operations``: ``send`` for each event it publishes, ``receive`` for each one it consumes
  (from its queue), and the dead-lettering of what it cannot process;
- ``components/messages``: each event with its envelope, payload, headers and correlation id.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import JsonSchemaMode, SkipJsonSchema, models_json_schema

from orderstack.events import EventType
from orderstack.messaging.envelope import MAX_EVENT_BYTES
from orderstack.messaging.topology import DEAD_LETTER_EXCHANGE, EXCHANGE, QueueSpec

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
CONTENT_TYPE = "application/json"
DEAD_LETTER_MESSAGE = "deadLetter"
SERVER = "rabbitmq"

_SCHEMA_REF = "#/components/schemas/{model}"
_TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class MessageHeaders(BaseModel):
    """AMQP application headers of an event. All optional: a message from one of the seed's
    services carries none, and a consumer never requires them. The event id is not a header
    but the AMQP ``message_id`` property (see the correlation id)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    request_id: str | SkipJsonSchema[None] = Field(
        default=None,
        alias="x-request-id",
        max_length=128,
        description="The X-Request-ID of the HTTP request that caused the event; the "
        "consumer binds it into its log lines, so one order is one search across services "
        "(a longer value is ignored)",
    )
    traceparent: Annotated[str, Field(pattern=_TRACEPARENT)] | SkipJsonSchema[None] = Field(
        default=None,
        alias="traceparent",
        description="W3C Trace Context of the span that wrote the event, when tracing is on; "
        "the consumer's batch span links to it",
    )


class DeadLetterHeaders(MessageHeaders):
    """Headers of a dead letter: the original message's headers, plus why and where from.
    A copy the consumer dead-lettered carries the ``x-orderstack-*`` headers; a message
    the broker dead-lettered (the copy could not be confirmed) carries ``x-death``."""

    reason: str | SkipJsonSchema[None] = Field(
        default=None,
        alias="x-orderstack-reason",
        max_length=1000,
        description="Why the consumer gave up on it",
    )
    routing_key: str | SkipJsonSchema[None] = Field(
        default=None,
        alias="x-orderstack-routing-key",
        description="The routing key it was published with (`orderstack dlq replay` uses it)",
    )
    queue: str | SkipJsonSchema[None] = Field(
        default=None, alias="x-orderstack-queue", description="The queue it was in"
    )
    dead_lettered_at: str | SkipJsonSchema[None] = Field(
        default=None,
        alias="x-orderstack-dead-lettered-at",
        json_schema_extra={"format": "date-time"},
        description="When it was dead-lettered (ISO 8601)",
    )
    x_death: list[dict[str, Any]] | SkipJsonSchema[None] = Field(
        default=None, alias="x-death", description="RabbitMQ's own dead-lettering record"
    )


def envelope_model(event: str, payload: type[BaseModel]) -> type[BaseModel]:
    """The body of ``event`` on the wire: the seed's NestJS envelope around ``payload``."""
    pattern: Any = Literal[event]  # a literal type built at run time
    return create_model(
        f"{_camel(event)}Envelope",
        __doc__=(
            f"The body of `{event}`: the NestJS microservice envelope the seed's services "
            "use, the event name in `pattern` and the payload in `data`."
        ),
        __config__=ConfigDict(extra="forbid"),
        pattern=(pattern, Field(description="The event name (also the routing key)")),
        data=(payload, Field(description="The payload")),
    )


def _examples(model: type[BaseModel]) -> list[Any]:
    """The examples a payload model declares (``json_schema_extra={"examples": [...]}``)."""
    extra = model.model_config.get("json_schema_extra")
    examples = extra.get("examples") if isinstance(extra, dict) else None
    return list(examples) if isinstance(examples, list) else []


def asyncapi_document(
    *,
    title: str,
    version: str,
    queue: QueueSpec,
    publishes: Sequence[EventType],
    consumes: Sequence[EventType],
    broker: str = "localhost:5672",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of a service that publishes ``publishes`` and consumes
    ``consumes`` from ``queue``. ``broker``: host:port."""
    # Event name -> the model it is sent with (its payload) or received with (what is read).
    sends: dict[str, type[BaseModel]] = {event.name: event.payload for event in publishes}
    receives: dict[str, type[BaseModel]] = {
        event.name: event.reads for event in consumes if event.reads is not None
    }
    routed = {event.name for event in publishes if event.routed}
    versions = {event.name: event.version for event in (*publishes, *consumes)}
    payloads = {event.name: event.payload for event in (*publishes, *consumes)}
    if set(receives) != set(queue.routing_keys):
        raise ValueError(
            f"{queue.name} is bound to {sorted(queue.routing_keys)} but the service reads "
            f"{sorted(receives)}"
        )
    if both := set(sends) & set(receives):
        raise ValueError(f"{title}: sends and receives {sorted(both)}")

    envelopes = {name: envelope_model(name, model) for name, model in {**sends, **receives}.items()}
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((envelopes[name], "serialization") for name in sends),
        *((envelopes[name], "validation") for name in receives),
        *((receives[name], "validation") for name in receives),  # a bare payload, too
        (MessageHeaders, "validation"),
        (DeadLetterHeaders, "validation"),
    ]
    refs, top = models_json_schema(inputs, ref_template=_SCHEMA_REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    for schema in schemas.values():  # a model's docstring, as Markdown paragraphs
        if isinstance(schema.get("description"), str):
            schema["description"] = _markdown(schema["description"])

    def message(name: str, mode: JsonSchemaMode, model: type[BaseModel]) -> dict[str, Any]:
        doc = _docstring(model)
        envelope = refs[(envelopes[name], mode)]
        if mode == "serialization":
            summary, payload = _first_paragraph(doc), envelope
        else:
            summary = f"{name}, as this service reads it"
            payload = {
                "description": "The envelope, or the bare payload (then the routing key names "
                "the event)",
                "anyOf": [envelope, refs[(model, mode)]],
            }
        # Examples of what its publisher writes (a reader takes those too).
        examples = _examples(payloads[name])
        return {
            "name": name,
            "title": f"{name} (version {versions[name]})",
            "x-event-version": versions[name],
            "summary": summary,
            "examples": [
                {"name": f"example{n}", "payload": {"pattern": name, "data": example}}
                for n, example in enumerate(examples, 1)
            ],
            "description": doc,
            "contentType": CONTENT_TYPE,
            "headers": refs[(MessageHeaders, "validation")],
            "payload": payload,
            "correlationId": {"$ref": "#/components/correlationIds/eventId"},
            "bindings": {
                "amqp": {"messageType": name, "bindingVersion": AMQP_BINDING_VERSION},
            },
        }

    messages: dict[str, Any] = {
        **{name: message(name, "serialization", model) for name, model in sends.items()},
        **{name: message(name, "validation", model) for name, model in receives.items()},
        DEAD_LETTER_MESSAGE: _dead_letter_message(refs[(DeadLetterHeaders, "validation")]),
    }

    channels: dict[str, Any] = {name: _routing_key_channel(name) for name in envelopes}
    dlq = queue.dead_letter_queue
    channels[queue.name] = _queue_channel(
        queue.name,
        f"The service's own queue, bound to {_keys(queue.routing_keys)} on `{EXCHANGE}`; "
        f"what cannot be processed goes through `{DEAD_LETTER_EXCHANGE}` to `{dlq}`.",
        receives,
    )
    channels[dlq] = _queue_channel(
        dlq,
        f"Dead letters of `{queue.name}` (through the direct exchange `{DEAD_LETTER_EXCHANGE}`): "
        "malformed messages, and those that failed after bounded retries. Inspect and "
        "re-drive them with `orderstack dlq list|show|replay|purge`.",
        [DEAD_LETTER_MESSAGE],
    )

    operations: dict[str, Any] = {}
    for name in sends:
        operations[f"send{_camel(name)}"] = {
            "action": "send",
            "title": f"Publish {name}",
            "summary": _first_paragraph(_docstring(sends[name])),
            "description": (
                "Written to the service's outbox in the transaction of the change that causes "
                "it and published by the relay after the commit: persistent, with publisher "
                "confirms"
                + (
                    ", mandatory (a routed event no queue takes stays in the outbox)."
                    if name in routed
                    else "; with no queue bound to it, the broker drops it."
                )
            ),
            "channel": _ref("channels", name),
            "messages": [_ref("channels", name, "messages", name)],
            "bindings": {
                "amqp": {
                    "deliveryMode": 2,
                    "mandatory": name in routed,
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
    for name in receives:
        operations[f"receive{_camel(name)}"] = {
            "action": "receive",
            "title": f"Consume {name}",
            "description": (
                f"Taken from `{queue.name}` in batches; applied in one transaction with the "
                "inbox (an event id already there changes nothing) and acknowledged after "
                "the commit."
            ),
            "channel": _ref("channels", queue.name),
            "messages": [_ref("channels", queue.name, "messages", name)],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        }
    operations["sendDeadLetter"] = {
        "action": "send",
        "title": "Dead-letter a message",
        "description": (
            f"A message of `{queue.name}` that is malformed, invalid or failing after bounded "
            f"retries is copied, with the reason, to `{dlq}` (confirmed), then acknowledged."
        ),
        "channel": _ref("channels", dlq),
        "messages": [_ref("channels", dlq, "messages", DEAD_LETTER_MESSAGE)],
    }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"{title} events",
            "version": version,
            "description": _INFO.format(exchange=EXCHANGE, max_bytes=MAX_EVENT_BYTES),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            SERVER: {
                "host": broker,
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "RabbitMQ. (`orderstack dev` without RABBITMQ_URL runs an "
                "in-process bus with the same names and semantics.)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "correlationIds": {
                "eventId": {
                    "description": "The event id: a UUID in the AMQP `message_id` property "
                    "(a property, not an application header). New for every event written; "
                    "kept by `orderstack dlq replay`. Consumers deduplicate on it (inbox).",
                    "location": "$message.header#/message_id",
                }
            },
        },
    }


_INFO = """\
Every event is published to the durable topic exchange `{exchange}` with the event name as \
routing key, persistent, with publisher confirms.

Body: the NestJS microservice envelope `{{"pattern": "<event name>", "data": <payload>}}`; \
a consumer also accepts a bare payload (then the routing key names the event). AMQP \
properties: `message_id` (the event id, a UUID), `type` (the event name), `content_type` \
`application/json`. A body larger than {max_bytes} bytes, not a JSON object, without a name, \
or with a `message_id` longer than 64 characters is malformed and dead-lettered.

Delivery is at least once (outbox, relayed after commit); effects are exactly once \
(inbox keyed by `message_id`). Payload fields are camelCase; unknown fields are ignored by \
consumers."""


def _dead_letter_message(headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": DEAD_LETTER_MESSAGE,
        "title": "dead letter",
        "summary": "A message this service could not process, unchanged",
        "description": "The original body, `message_id`, `type` and content type, unchanged "
        "(the body may be anything: a malformed message is kept as it came).",
        "contentType": CONTENT_TYPE,
        "headers": headers,
        "payload": {"description": "The original body, as it came"},
        "correlationId": {"$ref": "#/components/correlationIds/eventId"},
    }


def _routing_key_channel(name: str) -> dict[str, Any]:
    return {
        "address": name,
        "title": name,
        "description": f"Routing key `{name}` on the topic exchange `{EXCHANGE}`.",
        "messages": {name: _ref("components", "messages", name)},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": EXCHANGE,
                    "type": "topic",
                    "durable": True,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }


def _queue_channel(
    name: str, description: str, messages: Sequence[str] | Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "address": name,
        "title": name,
        "description": description,
        "messages": {m: _ref("components", "messages", m) for m in messages},
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {
                    "name": name,
                    "durable": True,
                    "exclusive": False,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }


def _ref(*path: str) -> dict[str, str]:
    """A local reference, each part escaped as a JSON Pointer token (RFC 6901)."""
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _camel(event: str) -> str:
    """``order.qty_confirmed`` -> ``OrderQtyConfirmed``."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", event))


def _keys(keys: Sequence[str]) -> str:
    return ", ".join(f"`{k}`" for k in keys)


def _docstring(model: type[BaseModel]) -> str:
    return _markdown(model.__doc__ or "")


def _markdown(doc: str) -> str:
    """A docstring with each paragraph on one line, its ``literals`` in Markdown."""
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(doc))
    text = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
    return text.replace("``", "`")  # reStructuredText literals to Markdown


def _first_paragraph(text: str) -> str:
    return text.split("\n\n", 1)[0]

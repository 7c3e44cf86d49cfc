"""``/asyncapi.json`` and ``/asyncapi`` on both services (built in process on the embedded
adapters, driven over ASGI).

Validity: each document is checked against the official AsyncAPI 3.0.0 JSON Schema,
vendored byte for byte from the ``@asyncapi/specs`` package (tests/unit/data/asyncapi/,
Apache-2.0), plus the rules that schema cannot express (every ``$ref`` resolves; an
operation's messages are messages of its own channel).

Coverage: the events the code publishes are found by calling every builder of the events
modules (a new builder fails ``test_every_builder_is_exercised`` until it is added here);
the events it consumes by asking each handler which names it accepts, over every name in
the topology, the documents and the builders; none of it is a list written down here.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, get_type_hints

import httpx
import jsonschema_rs
import orjson
import pytest
from fastapi import FastAPI

from orderstack.bootstrap import ORDER_SERVICE, PRODUCT_SERVICE, order_app, product_app
from orderstack.config import Settings, load_settings
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.envelope import Event, MalformedEvent, decode, encode
from orderstack.messaging.rabbitmq import (
    DEAD_LETTERED_AT_HEADER,
    QUEUE_HEADER,
    REASON_HEADER,
    ROUTING_KEY_HEADER,
)
from orderstack.messaging.topology import ALL_QUEUES, ROUTED_EVENTS, QueueSpec
from orderstack.orders import events as order_events
from orderstack.orders.domain import Order, OrderLine, OrderStatus
from orderstack.orders.handlers import OrderEventsHandler
from orderstack.orders.service import OrderService
from orderstack.products import events as product_events
from orderstack.products.domain import (
    Product,
    Refusal,
    Refused,
    Reservation,
    ReservationOutcome,
    ShortLine,
    StockLine,
)
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.service import ProductService

OFFICIAL_SCHEMA = Path(__file__).parent / "data" / "asyncapi" / "3.0.0.json"
NOW = datetime(2025, 9, 20, 10, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(OFFICIAL_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return jsonschema_rs.validator_for(schema)


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(
        DATABASE_URL=f"sqlite:///{tmp_path / 'orderstack.db'}",
        LOCAL_BUS_PATH=":memory:",
        **overrides,
    )


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@dataclass
class Service:
    """One service's document as it serves it, and what the code says it does."""

    name: str
    queue: QueueSpec
    document: dict[str, Any]
    page: str
    events: ModuleType  # its publishers
    accepts: Callable[[str], bool]  # does its handler take an event of this name?

    def operations(self, action: str, channel_is: str) -> dict[str, set[str]]:
        """The operations with ``action`` on channels that are AMQP ``channel_is``
        (``routingKey``: the exchange; ``queue``): operation id -> message names."""
        return {
            op_id: {self.resolve(ref["$ref"])["name"] for ref in op["messages"]}
            for op_id, op in self.document["operations"].items()
            if op["action"] == action
            and self.resolve(op["channel"]["$ref"])["bindings"]["amqp"]["is"] == channel_is
        }

    def sent(self) -> set[str]:
        """Events it publishes to the exchange."""
        return set().union(*self.operations("send", "routingKey").values())

    def received(self) -> set[str]:
        """Events it consumes from its queue."""
        return set().union(*self.operations("receive", "queue").values())

    def resolve(self, ref: str) -> Any:
        """The node ``ref`` points to, following references on the way."""
        node = resolve(self.document, ref)
        while isinstance(node, dict) and set(node) == {"$ref"}:
            node = resolve(self.document, node["$ref"])
        return node

    def message(self, name: str) -> dict[str, Any]:
        message: dict[str, Any] = self.document["components"]["messages"][name]
        return message

    def conforms(self, instance: object, schema: dict[str, Any]) -> bool:
        """``instance`` against a schema of the document (its refs into components)."""
        root = {**schema, "components": self.document["components"]}
        return bool(jsonschema_rs.validator_for(root).is_valid(instance))


def resolve(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node = document
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and token in node, f"{ref} does not resolve"
        node = node[token]
    return node


def accepts(handler: OrderEventsHandler | OrderStockHandler) -> Callable[[str], bool]:
    def check(name: str) -> bool:
        try:
            handler.validate(Event(name, {}))
        except MalformedEvent as exc:
            return not str(exc).startswith("unexpected event")
        return True

    return check


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    import asyncio

    settings = settings_for(tmp_path_factory.mktemp("asyncapi"))
    infra = Infrastructure.from_settings(settings, both_services=True)
    apps = {
        ORDER_SERVICE.name: (order_app(settings, infra), ORDER_SERVICE.queue),
        PRODUCT_SERVICE.name: (product_app(settings, infra), PRODUCT_SERVICE.queue),
    }
    handlers = {
        ORDER_SERVICE.name: (order_events, OrderEventsHandler(None)),  # type: ignore[arg-type]
        PRODUCT_SERVICE.name: (product_events, OrderStockHandler(None)),  # type: ignore[arg-type]
    }

    async def fetch() -> dict[str, Service]:
        found = {}
        for name, (app, queue) in apps.items():
            async with client(app) as http:
                document = await http.get("/asyncapi.json")
                page = await http.get("/asyncapi")
            assert document.status_code == 200, document.text
            assert document.headers["content-type"] == "application/json"
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            module, handler = handlers[name]
            found[name] = Service(name, queue, document.json(), page.text, module, accepts(handler))
        await infra.close()
        return found

    yield asyncio.run(fetch())


@pytest.fixture(params=[ORDER_SERVICE.name, PRODUCT_SERVICE.name])
def service(request: pytest.FixtureRequest, services: dict[str, Service]) -> Service:
    return services[request.param]


# -- valid AsyncAPI 3 ---------------------------------------------------------------------


def test_the_document_is_valid_against_the_official_asyncapi_3_schema(
    service: Service, validator: Any
) -> None:
    errors = [
        f"{list(e.instance_path)}: {e.message[:300]}"
        for e in validator.iter_errors(service.document)
    ]
    assert not errors, errors
    assert service.document["asyncapi"] == "3.0.0"
    assert service.document["info"]["title"] and service.document["info"]["version"]


def test_the_official_schema_does_reject_an_invalid_document(
    service: Service, validator: Any
) -> None:
    """The validator is live: what AsyncAPI 3 forbids fails it."""
    broken = copy.deepcopy(service.document)
    next(iter(broken["operations"].values()))["action"] = "publish"  # AsyncAPI 2's word
    assert not validator.is_valid(broken)
    no_version = copy.deepcopy(service.document)
    del no_version["info"]["version"]
    assert not validator.is_valid(no_version)
    bad_binding = copy.deepcopy(service.document)
    bad_binding["channels"][service.queue.name]["bindings"]["amqp"]["is"] = "exchange"
    assert not validator.is_valid(bad_binding)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_reference_resolves_inside_the_document(service: Service) -> None:
    found = list(refs(service.document))
    assert len(found) > 20
    for ref in found:
        service.resolve(ref)  # local, and it exists


def test_operations_take_their_messages_from_their_own_channel(service: Service) -> None:
    """What the spec requires and its JSON Schema cannot check: an operation's channel is a
    channel of the document, and its messages a subset of that channel's messages."""
    channels = service.document["channels"]
    for op_id, op in service.document["operations"].items():
        assert op["action"] in ("send", "receive")
        channel_ref = op["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), op_id
        channel = service.resolve(channel_ref)
        assert channel in channels.values()
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), (op_id, message)
    for name, channel in channels.items():
        assert channel["address"], name
        for message in channel["messages"].values():
            assert message["$ref"].startswith("#/components/messages/"), name


# -- every event of the code is in it -----------------------------------------------------

ORDER = Order(7, (OrderLine(3, 2),), Decimal("2999.99"), OrderStatus.PENDING, NOW)
WHOLE_PRICE_ORDER = Order(8, (OrderLine(3, 1),), Decimal("25"), OrderStatus.PENDING, NOW)
PRODUCT = Product(3, "Laptop", Decimal("999.5"), 5, NOW, NOW, 1)

# Builder -> calls covering each of its outcomes.
SAMPLE_EVENTS: dict[str, Callable[[], list[Event]]] = {
    "order_created_event": lambda: [
        order_events.order_created_event(ORDER),
        order_events.order_created_event(WHOLE_PRICE_ORDER),
    ],
    "order_cancelled_event": lambda: [order_events.order_cancelled_event(ORDER, NOW)],
    "order_expired_event": lambda: [
        order_events.order_expired_event(ORDER, NOW),
        order_events.order_expired_event(replace(ORDER, hold_seconds=60, expires_at=NOW), NOW),
    ],
    "product_created_event": lambda: [product_events.product_created_event(PRODUCT, NOW)],
    "reservation_answer": lambda: (
        [
            product_events.reservation_answer(reservation, NOW)
            for reservation in (
                Reservation(
                    7, None, 0, outcome, (StockLine(3, 2, Decimal("9.99")), StockLine(4, 1))
                )
                for outcome in ReservationOutcome
            )
        ]
        + [
            product_events.reservation_answer(
                Reservation(7, 3, 2, ReservationOutcome.FAILED, refusal=refusal), NOW
            )
            for refusal in (
                Refusal(Refused.UNAVAILABLE, (ShortLine(3, 2, 1),), Decimal(20)),
                Refusal(Refused.PRICE_CHANGED, (), Decimal("19.98")),
                Refusal(Refused.TOTAL_OUT_OF_RANGE),
            )
        ]
    ),
}


def builders(module: ModuleType) -> list[str]:
    """The functions of an events module that return an Event."""
    return [
        name
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if function.__module__ == module.__name__
        and get_type_hints(function).get("return") is Event
    ]


def published(service: Service) -> list[Event]:
    return [event for name in builders(service.events) for event in SAMPLE_EVENTS[name]()]


def test_every_builder_is_exercised() -> None:
    found = builders(order_events) + builders(product_events)
    assert sorted(found) == sorted(SAMPLE_EVENTS)


def test_every_event_the_service_publishes_is_a_send_operation_and_matches_its_schema(
    service: Service,
) -> None:
    events = published(service)
    assert {e.name for e in events} == service.sent()
    headers = {"x-request-id": "req-1", "traceparent": f"00-{'a' * 32}-{'b' * 16}-01"}
    for event in events:
        message = service.message(event.name)
        body = orjson.loads(encode(event))  # the bytes the relay publishes
        assert service.conforms(body, message["payload"]), (event.name, body)
        assert service.conforms(headers, message["headers"])
        # The payload itself, without the envelope, is not a valid body of a sent message.
        assert not service.conforms(event.data, message["payload"])


def test_every_event_the_service_consumes_is_a_receive_operation(
    services: dict[str, Service], service: Service
) -> None:
    names = set(ROUTED_EVENTS)
    for other in services.values():
        names |= set(other.document["components"]["messages"])
        names |= {e.name for e in published(other)}
    accepted = {name for name in names if service.accepts(name)}
    assert accepted, service.name
    assert accepted == service.received() == set(service.queue.routing_keys)
    for name in accepted:
        assert name in service.document["channels"][service.queue.name]["messages"]


def test_every_routed_event_is_sent_by_one_service_and_received_by_the_other(
    services: dict[str, Service],
) -> None:
    assert set(ROUTED_EVENTS) == {key for queue in ALL_QUEUES for key in queue.routing_keys}
    for name in ROUTED_EVENTS:
        senders = [s.name for s in services.values() if name in s.sent()]
        receivers = [s.name for s in services.values() if name in s.received()]
        assert len(senders) == 1 and len(receivers) == 1 and senders != receivers, name
    everything = {e.name for s in services.values() for e in published(s)}
    assert everything <= {name for s in services.values() for name in s.sent()}


# -- the consumers' leniency is documented as it is -----------------------------------------

# (routing key, body, what the consumer must do with it): the seed's variants are taken.
CONSUMED_BODIES = [
    ("order.created", {"orderId": 7, "productId": 3, "totalPrice": 699.99, "createdAt": "x"}, True),
    ("order.created", {"orderId": 7, "productId": 3, "quantity": 2}, True),
    ("order.created", {"orderId": 7}, False),
    ("order.created", {"orderId": 7, "items": [{"productId": 3, "quantity": 2}]}, True),
    ("order.created", {"orderId": 7, "items": []}, False),
    ("order.created", {"orderId": 7, "items": [{"quantity": 2}]}, False),
    ("order.created", {"orderId": 7, "productId": 3, "agreedTotal": 9.99}, True),
    ("order.created", {"orderId": 7, "productId": 3, "agreedTotal": "x"}, False),
    ("order.qty_confirmed", {"orderId": 7, "items": [{"productId": 3}]}, False),
    ("order.created", {"orderId": 0, "productId": 3}, False),
    ("order.created", {"orderId": 7, "productId": 3, "quantity": 0}, False),
    ("order.created", {"orderId": 7, "productId": 3, "quantity": "2"}, False),
    ("order.created", {"orderId": 7, "productId": 3, "quantity": 1001}, False),
    ("order.created", {"orderId": 7, "items": [{"productId": 3, "quantity": 1001}]}, False),
    ("order.cancelled", {"orderId": 7, "productId": 3}, True),
    ("order.cancelled", {"orderId": 7, "productId": True}, False),
    ("order.qty_confirmed", {"orderId": 7}, True),
    ("order.qty_failed", {"orderId": 8, "timestamp": "2025-09-20T10:30:00Z"}, True),
    ("order.qty_failed", {"orderId": 8, "reason": "some_new_reason"}, True),
    ("order.qty_failed", {"reason": "cancelled"}, False),
]


@pytest.mark.parametrize(("name", "data", "taken"), CONSUMED_BODIES)
@pytest.mark.parametrize("wrapped", [True, False], ids=["envelope", "bare"])
def test_the_documented_receive_schema_agrees_with_the_handler(
    services: dict[str, Service],
    order_service: OrderService,
    product_service: ProductService,
    name: str,
    data: dict[str, Any],
    taken: bool,
    wrapped: bool,
) -> None:
    service = next(s for s in services.values() if name in s.received())
    handler = (
        OrderEventsHandler(order_service)
        if name in ORDER_SERVICE.queue.routing_keys
        else OrderStockHandler(product_service)
    )
    body = {"pattern": name, "data": data} if wrapped else data
    event = decode(orjson.dumps(body), message_id=None, routing_key=name)
    try:
        handler.validate(event)
        handled = True
    except MalformedEvent:
        handled = False
    assert handled is taken
    assert service.conforms(body, service.message(name)["payload"]) is taken


def test_the_dead_letter_headers_are_the_ones_the_consumer_writes(service: Service) -> None:
    dead_letter = service.resolve(service.message("deadLetter")["headers"]["$ref"])
    written = {REASON_HEADER, ROUTING_KEY_HEADER, QUEUE_HEADER, DEAD_LETTERED_AT_HEADER}
    assert written <= set(dead_letter["properties"])
    assert {"x-request-id", "traceparent"} <= set(dead_letter["properties"])
    assert dead_letter.get("required", []) == []


# -- the page and the routes ----------------------------------------------------------------


def test_the_page_shows_every_channel_operation_and_message_without_scripts(
    service: Service,
) -> None:
    page = service.page
    for channel in service.document["channels"].values():
        assert f"<code>{channel['address']}</code>" in page
    for op_id in service.document["operations"]:
        assert f"<code>{op_id}</code>" in page
    for name in service.document["components"]["messages"]:
        assert f'id="message-{name}"' in page
    for name in service.document["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert "<pre>" in page and 'href="/docs"' in page
    assert "<script" not in page.lower() and "src=" not in page.lower()


@pytest.fixture
async def order_app_on_rabbitmq(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(tmp_path)
    # The broker below is only written about.
    infra = Infrastructure.from_settings(settings, both_services=True)
    on_rabbitmq = settings_for(tmp_path, RABBITMQ_URL="amqp://orders:s3cret@broker.internal:5673/")
    async with client(order_app(on_rabbitmq, infra)) as http:
        yield http
    await infra.close()


async def test_the_server_is_the_configured_broker_without_its_credentials(
    order_app_on_rabbitmq: httpx.AsyncClient,
) -> None:
    response = await order_app_on_rabbitmq.get("/asyncapi.json")
    servers = response.json()["servers"]
    assert [s["host"] for s in servers.values()] == ["broker.internal:5673"]
    assert all(s["protocol"] == "amqp" for s in servers.values())
    assert "s3cret" not in response.text
    openapi = (await order_app_on_rabbitmq.get("/openapi.json")).json()
    assert "/asyncapi.json" not in openapi["paths"] and "/asyncapi" not in openapi["paths"]

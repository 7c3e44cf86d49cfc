"""One declaration per event (src/orderstack/events.py): nothing else in ``src/`` names an
event, and the topology, the parsing and the contract's tables follow the declarations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orderstack import events
from orderstack.events import EVENTS, ORDER_CANCELLED, ORDER_CREATED, ORDER_EXPIRED, Service
from orderstack.messaging import events_doc
from orderstack.messaging.consumer import EventRoutes
from orderstack.messaging.envelope import Event, MalformedEvent
from orderstack.messaging.topology import ALL_QUEUES, QUEUES, ROUTED_EVENTS

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DECLARATIONS = Path(events.__file__).resolve()
CONTRACT = ROOT / "docs" / "CONTRACT.md"


def test_no_event_name_is_quoted_in_src_outside_the_declarations() -> None:
    names = "|".join(re.escape(event.name) for event in EVENTS)
    quoted = re.compile(rf"""(["'])({names})\1""")
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.resolve() != DECLARATIONS
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if quoted.search(line)
    ]
    assert not found, "event names belong in orderstack/events.py:\n" + "\n".join(found)


def test_the_grep_would_find_a_quoted_name() -> None:
    names = "|".join(re.escape(event.name) for event in EVENTS)
    quoted = re.compile(rf"""(["'])({names})\1""")
    assert quoted.search("Event('order.created', {})")
    assert quoted.search('ROUTED = {"product_created"}')
    assert not quoted.search("``order.created`` takes stock")  # prose in a docstring


def test_names_are_unique_and_every_declaration_is_complete() -> None:
    assert len({event.name for event in EVENTS}) == len(EVENTS)
    for event in EVENTS:
        assert event.version >= 1, event.name
        assert event.publisher not in event.consumers, event.name
        assert event.requires, event.name
        assert (event.reads is not None) or not event.consumers, event.name
        # The payload we publish is strict; what consumers read is lenient.
        assert event.payload.model_config.get("extra") == "forbid", event.name
        if event.reads is not None and event.consumers:
            assert event.reads.model_config.get("extra") == "ignore", event.name


def test_each_queue_is_bound_to_what_its_service_consumes() -> None:
    assert set(QUEUES.values()) == set(ALL_QUEUES)
    for service, queue in QUEUES.items():
        assert queue.routing_keys == tuple(e.name for e in EVENTS if service in e.consumers)
    assert {e.name for e in EVENTS if e.routed} == ROUTED_EVENTS


def test_the_wire_names_are_the_seeds() -> None:
    # The routing keys and queues the seed's services use: a declaration never renames one.
    assert QUEUES[Service.PRODUCTS].name == "product-service.events"
    assert QUEUES[Service.PRODUCTS].routing_keys[:2] == ("order.created", "order.cancelled")
    # Added beside the seed's (holds, issue 23): a seed's product service never gets it.
    assert QUEUES[Service.PRODUCTS].routing_keys[2:] == ("order.expired",)
    assert QUEUES[Service.ORDERS].name == "order-service.events"
    assert QUEUES[Service.ORDERS].routing_keys == ("order.qty_confirmed", "order.qty_failed")
    assert [e.name for e in EVENTS if not e.consumers] == ["product_created"]


def test_routes_must_cover_exactly_what_the_service_consumes() -> None:
    with pytest.raises(ValueError, match="consumes"):
        EventRoutes(Service.PRODUCTS, {ORDER_CREATED: lambda p: p})
    with pytest.raises(ValueError, match="consumes"):
        EventRoutes(Service.ORDERS, {ORDER_CREATED: lambda p: p})
    routes = EventRoutes(
        Service.PRODUCTS,
        {
            ORDER_CREATED: lambda p: ("take", p),
            ORDER_CANCELLED: lambda p: p,
            ORDER_EXPIRED: lambda p: p,
        },
    )
    kind, payload = routes.read(Event("order.created", {"orderId": 1, "productId": 2, "x": 0}))
    assert kind == "take" and payload.quantity == 1
    with pytest.raises(MalformedEvent, match="unexpected event"):
        routes.read(Event("order.qty_confirmed", {"orderId": 1}))
    with pytest.raises(MalformedEvent, match="invalid order.created"):
        routes.read(Event("order.created", {"orderId": 1}))


def test_the_contract_tables_are_generated_from_the_declarations() -> None:
    page = CONTRACT.read_text(encoding="utf-8")
    assert events_doc.render(page) == page, "run `make docs`"
    for event in EVENTS:
        assert f"| `{event.name}` | {event.version} | {event.publisher} |" in page
    for queue in ALL_QUEUES:
        assert f"| `{queue.name}` |" in page


def test_a_page_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        events_doc.render("# Events\n\nno tables here\n")

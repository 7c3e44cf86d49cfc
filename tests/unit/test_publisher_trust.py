"""Who may publish which event (messaging/trust.py): the rule itself, each service's broker
user from the settings, and the check on the embedded default (both services on the
in-process bus, as ``orderstack dev`` runs them): an event put on the bus by anyone but the
user its publisher publishes as is dead-lettered (``untrusted_publisher``) and changes
nothing. The same check on the real broker: tests/integration/test_publisher_trust_on_rabbitmq.py
and tests/e2e/test_publisher_trust.py."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import orjson
import pytest

from orderstack.bootstrap import order_app, product_app
from orderstack.config import Settings, load_settings
from orderstack.events import EVENTS, Service
from orderstack.infrastructure import Infrastructure
from orderstack.messaging.bus import Delivery
from orderstack.messaging.inprocess import LOCAL_USER, InProcessBus
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from orderstack.messaging.trust import UNTRUSTED_PUBLISHER, PublisherTrust, broker_permissions

ORDERS, PRODUCTS = "order-service", "product-service"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def test_each_event_is_believed_from_its_publishers_user_only() -> None:
    trust = PublisherTrust({Service.ORDERS: ORDERS, Service.PRODUCTS: PRODUCTS})
    for event in EVENTS:
        own = ORDERS if event.publisher is Service.ORDERS else PRODUCTS
        other = PRODUCTS if own == ORDERS else ORDERS
        assert trust.refusal(event.name, own) is None
        for user_id in (other, "guest", None, ""):
            refusal = trust.refusal(event.name, user_id)
            assert refusal is not None and refusal.startswith(UNTRUSTED_PUBLISHER), user_id
    # A name no declaration has is the handler's to refuse (unexpected event).
    assert trust.refusal("order.shipped", "mallory") is None


def test_when_present_believes_a_message_without_user_id_never_a_wrong_one() -> None:
    trust = PublisherTrust.shared(ORDERS, require_user_id=False)

    assert trust.refusal("order.created", None) is None
    assert trust.refusal("order.created", ORDERS) is None
    assert trust.refusal("order.created", "mallory") is not None


def test_the_broker_users_come_from_the_settings_defaulting_to_the_urls_user() -> None:
    shared = PublisherTrust.from_settings(
        load_settings(RABBITMQ_URL="amqp://app%40shop:secret@rabbit:5672/")
    )
    assert dict(shared.users) == {Service.ORDERS: "app@shop", Service.PRODUCTS: "app@shop"}
    assert shared.require_user_id

    split = PublisherTrust.from_settings(
        load_settings(
            RABBITMQ_URL="amqp://order-service:secret@rabbit:5672/",
            ORDER_SERVICE_BROKER_USER=ORDERS,
            PRODUCT_SERVICE_BROKER_USER=PRODUCTS,
            BROKER_USER_ID_CHECK="when_present",
        )
    )
    assert dict(split.users) == {Service.ORDERS: ORDERS, Service.PRODUCTS: PRODUCTS}
    assert not split.require_user_id
    assert split.services_of(ORDERS) == {Service.ORDERS}
    assert split.services_of("admin") == set()
    # A URL without a user logs in as guest (the AMQP client's default).
    assert load_settings(RABBITMQ_URL="amqp://rabbit:5672/").broker_user == "guest"


def test_every_node_of_a_cluster_must_be_reached_as_one_user() -> None:
    with pytest.raises(Exception, match="RABBITMQ_URL"):
        load_settings(RABBITMQ_URL="amqp://a:p@rmq1:5672/,amqp://b:p@rmq2:5672/")


def test_each_service_may_publish_its_own_events_only() -> None:
    for service in Service:
        allowed = broker_permissions(service)
        for event in EVENTS:
            mine = event.publisher is service
            assert bool(_full_match(allowed.topic_write, event.name)) == mine, event.name
            consumed = service in event.consumers
            assert bool(_full_match(allowed.topic_read, event.name)) == consumed, event.name
        # Its own queues, not the other's (which it may read the dead letters of only).
        own = "order-service.events" if service is Service.ORDERS else "product-service.events"
        other = "product-service.events" if own.startswith("order") else "order-service.events"
        for pattern in (allowed.configure, allowed.write, allowed.read):
            assert _full_match(pattern, own) and not _full_match(pattern, other)
        assert not _full_match(allowed.configure, f"{other}.dlq")


def _full_match(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


# -- the embedded default --------------------------------------------------------------------


@pytest.fixture
async def dev(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, InProcessBus]]:
    """Both services on the in-process bus, as `orderstack dev` composes them."""
    settings = load_settings(
        DATABASE_URL=f"sqlite:///{tmp_path / 'orderstack.db'}",
        LOCAL_BUS_PATH=":memory:",
        BATCH_LINGER_SECONDS=0,
    )
    infra = Infrastructure.from_settings(settings, both_services=True)
    products, orders = product_app(settings, infra), order_app(settings, infra)
    async with AsyncExitStack() as stack:
        for app in (products, orders):
            await stack.enter_async_context(app.router.lifespan_context(app))
        for _ in range(200):  # the bus starts in the background
            if await infra.bus.is_up():
                break
            await asyncio.sleep(0.01)
        assert isinstance(infra.bus, InProcessBus)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=products), base_url="http://test"
        )
        yield await stack.enter_async_context(client), infra.bus
    await infra.close()


async def test_on_the_embedded_bus_a_forged_order_created_takes_nothing(
    dev: tuple[httpx.AsyncClient, InProcessBus],
) -> None:
    products, bus = dev
    created = await products.post("/products", json={"name": "Target", "price": 5, "qty": 1000})
    assert created.status_code == 201, created.text
    product_id = created.json()["id"]
    body = orjson.dumps(
        {
            "pattern": "order.created",
            "data": {"orderId": 987_654, "items": [{"productId": product_id, "quantity": 900}]},
        }
    )
    queue = PRODUCT_SERVICE_QUEUE.name
    await bus.publish_raw(queue, body, "forged-1", "order.created", user_id="mallory")
    await bus.publish_raw(queue, body, "forged-2", "order.created")  # no user at all
    # The same event from the embedded bus's own user is believed (the control).
    await bus.publish_raw(queue, body, "genuine", "order.created", user_id=LOCAL_USER)

    for _ in range(300):
        letters = await bus.dead_letters(queue, 10)
        qty = (await products.get(f"/products/{product_id}")).json()["qty"]
        if len(letters) == 2 and qty == 100:
            break
        await asyncio.sleep(0.02)
    assert qty == 100  # the genuine one's 900 units, not the forgeries'
    assert {(d.message_id, d.user_id) for d in letters} == {
        ("forged-1", "mallory"),
        ("forged-2", None),
    }
    assert all(
        (d.reason or "").startswith(f"{UNTRUSTED_PUBLISHER}: order.created") for d in letters
    )


async def test_messages_of_a_bus_file_written_before_user_ids_are_still_believed(
    tmp_path: Path,
) -> None:
    """An `orderstack dev` upgraded with messages still in its bus file: they were put there
    by the bus itself, so they are its user's (an upgrade dead-letters nothing)."""
    path = tmp_path / "bus.db"
    with sqlite3.connect(path) as old:  # the table as the version before wrote it
        old.execute(
            "CREATE TABLE bus_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue VARCHAR(128)"
            " NOT NULL, message_id VARCHAR(128), routing_key VARCHAR(128) NOT NULL, body BLOB"
            " NOT NULL, headers TEXT, dead BOOLEAN NOT NULL, reason TEXT)"
        )
        old.execute(
            "INSERT INTO bus_messages (queue, message_id, routing_key, body, dead)"
            " VALUES (?, 'before', 'order.created', ?, 0)",
            (PRODUCT_SERVICE_QUEUE.name, b'{"orderId": 1, "productId": 1}'),
        )
    bus = InProcessBus(path)
    await bus.start()
    received: list[Delivery] = []

    async def collect(delivery: Delivery) -> None:
        received.append(delivery)
        await delivery.ack()

    try:
        await bus.consume(PRODUCT_SERVICE_QUEUE, collect, prefetch=10)
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
    finally:
        await bus.close()

    [delivery] = received
    assert delivery.user_id == LOCAL_USER
    assert bus.trust.refusal("order.created", delivery.user_id) is None

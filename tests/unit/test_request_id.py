"""X-Request-ID: accepted or generated, echoed, in every log line of the request, stored
with the outbox row, carried by the bus, bound again by the consumer, copied into the
answer by the product service, and in the order service's settle log line. Both services
in process on the embedded adapters (a SQLite file, the in-process bus), driven over ASGI;
log lines captured from structlog with its contextvars merged, as the services log."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import structlog
from structlog.testing import LogCapture

from orderstack.bootstrap import order_app, product_app
from orderstack.infrastructure import Infrastructure
from orderstack.logging import MAX_REQUEST_ID_CHARS, valid_request_id
from orderstack.messaging.consumer import EventConsumer, bound_to, events_being_applied
from orderstack.messaging.envelope import Event
from orderstack.messaging.inprocess import InProcessBus
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE
from orderstack.orders.repository import outbox as orders_outbox
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.repository import outbox as products_outbox
from orderstack.products.service import ProductService
from tests.unit.fakes import FakeDelivery, FakeProductDatabase
from tests.unit.test_metrics import Services, client, new_product, settings_for

Logs = list[dict[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every log line written meanwhile, as the services write it (contextvars merged)."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, capture],
        cache_logger_on_first_use=False,
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


async def embedded(tmp_path: Path, stack: AsyncExitStack, **overrides: object) -> Services:
    settings = settings_for(tmp_path, **overrides)
    infra = Infrastructure.from_settings(settings, both_services=True)
    stack.push_async_callback(infra.close)
    products, orders = product_app(settings, infra), order_app(settings, infra)
    for app in (products, orders):
        await stack.enter_async_context(app.router.lifespan_context(app))
    for _ in range(200):
        if await infra.bus.is_up():
            break
        await asyncio.sleep(0.01)
    assert isinstance(infra.bus, InProcessBus)
    return Services(
        await stack.enter_async_context(client(products)),
        await stack.enter_async_context(client(orders)),
        infra.bus,
    )


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    async with AsyncExitStack() as stack:
        yield await embedded(tmp_path, stack, ACCESS_LOG=True)


def is_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


# -- the header ----------------------------------------------------------------------------


async def test_a_given_request_id_is_echoed(services: Services) -> None:
    response = await services.products.get("/livez", headers={"X-Request-ID": "abc-123.XYZ"})
    assert response.headers["X-Request-ID"] == "abc-123.XYZ"
    longest = "r" * MAX_REQUEST_ID_CHARS
    response = await services.orders.get("/orders/1", headers={"X-Request-ID": longest})
    assert response.status_code == 404  # errors carry it too
    assert response.headers["X-Request-ID"] == longest


async def test_one_is_generated_when_absent(services: Services) -> None:
    first = (await services.orders.get("/livez")).headers["X-Request-ID"]
    second = (await services.orders.get("/livez")).headers["X-Request-ID"]
    assert is_uuid4(first) and is_uuid4(second) and first != second


@pytest.mark.parametrize(
    "bad",
    ["", "has space", "tab\there", "r" * (MAX_REQUEST_ID_CHARS + 1), "caf\u00e9", "a\x7fb"],
)
async def test_an_unusable_request_id_is_replaced(services: Services, bad: str) -> None:
    raw = bad.encode("latin-1")
    response = await services.products.get("/livez", headers=[(b"X-Request-ID", raw)])
    assert response.headers["X-Request-ID"] != bad
    assert is_uuid4(response.headers["X-Request-ID"])


def test_valid_request_id() -> None:
    assert valid_request_id("0af7651916cd43dd8448eb211c80319c") is not None
    assert valid_request_id(None) is None
    assert valid_request_id("a b") is None


# -- log lines -----------------------------------------------------------------------------


async def test_every_log_line_of_a_request_carries_its_id_and_the_access_line_is_json(
    services: Services, logs: Logs
) -> None:
    product_id = await new_product(services)
    response = await services.orders.post(
        "/orders", json={"product_id": product_id, "total_price": 5}
    )
    order_id = response.json()["id"]
    logs.clear()
    response = await services.orders.post(
        f"/orders/{order_id}/cancel", headers={"X-Request-ID": "cancel-1"}
    )
    assert response.status_code == 200

    mine = [line for line in logs if line.get("request_id") == "cancel-1"]
    assert any(line["event"] == "order cancelled" for line in mine)
    [access] = [line for line in mine if line["event"] == "request"]
    assert access["method"] == "POST"
    assert access["route"] == "/orders/{order_id}/cancel"
    assert access["status"] == 200
    assert access["duration_ms"] >= 0
    orjson.dumps(access)  # a JSON object: plain values only
    # Nothing the request logged went without the id.
    assert not [
        line
        for line in logs
        if line["event"] in ("order cancelled", "request") and "request_id" not in line
    ]


async def test_the_access_log_is_off_by_default(tmp_path: Path, logs: Logs) -> None:
    async with AsyncExitStack() as stack:
        services = await embedded(tmp_path, stack)
        await services.products.get("/livez", headers={"X-Request-ID": "quiet"})
    assert not [line for line in logs if line.get("event") == "request"]


# -- through the outbox, the bus and the consumer --------------------------------------------


async def outbox_origins(engine: sa.ext.asyncio.AsyncEngine, table: sa.Table) -> list[Any]:
    async with engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    sa.select(table.c.event_type, table.c.payload, table.c.request_id)
                    .where(table.c.event_type.like("order.%"))
                    .order_by(table.c.id)
                )
            ).all()
        )


async def test_one_order_carries_its_request_id_to_the_settle_log_line(
    tmp_path: Path, logs: Logs
) -> None:
    async with AsyncExitStack() as stack:
        settings = settings_for(tmp_path)
        infra = Infrastructure.from_settings(settings, both_services=True)
        stack.push_async_callback(infra.close)
        products = product_app(settings, infra)
        orders = order_app(settings, infra)
        for app in (products, orders):
            await stack.enter_async_context(app.router.lifespan_context(app))
        assert isinstance(infra.bus, InProcessBus)
        services = Services(
            await stack.enter_async_context(client(products)),
            await stack.enter_async_context(client(orders)),
            infra.bus,
        )
        product_id = await new_product(services)
        response = await services.orders.post(
            "/orders",
            json={"product_id": product_id, "total_price": 5},
            headers={"X-Request-ID": "order-req-1"},
        )
        assert response.headers["X-Request-ID"] == "order-req-1"
        order_id = response.json()["id"]
        assert (await services.settled(order_id))["status"] == "confirmed"
        for _ in range(100):  # the settle line is written right after the commit
            if any(line["event"] == "order settled" for line in logs):
                break
            await asyncio.sleep(0.01)

        # The order service's outbox row, and the product service's answer, copied from
        # the order.created it consumed.
        [(name, _, stored)] = await outbox_origins(infra.engine, orders_outbox)
        assert (name, stored) == ("order.created", "order-req-1")
        [(name, payload, answered)] = await outbox_origins(infra.engine, products_outbox)
        assert name == "order.qty_confirmed" and orjson.loads(payload)["orderId"] == order_id
        assert answered == "order-req-1"

    [answered_line] = [line for line in logs if line["event"] == "order answered"]
    assert answered_line["request_id"] == "order-req-1"
    assert answered_line["answer"] == "order.qty_confirmed"
    [settled] = [line for line in logs if line["event"] == "order settled"]
    assert settled["request_id"] == "order-req-1"
    assert settled["order_id"] == order_id and settled["status"] == "confirmed"
    # The consumers' batch lines on both sides name it (request_ids), as does every line
    # the request wrote.
    assert all(line["request_id"] == "order-req-1" for line in logs if "request_id" in line)


async def test_the_consumer_binds_the_ids_of_its_batch_and_of_each_message(
    product_db: FakeProductDatabase, product_service: ProductService
) -> None:
    product = await product_service.create_product("Phone", Decimal(5), 10)
    seen: dict[str, Any] = {}

    class Recording(OrderStockHandler):
        async def apply(self, uow: Any, commands: Sequence[Any]) -> None:
            seen["batch"] = structlog.contextvars.get_contextvars()
            events = events_being_applied()
            seen["events"] = [e.request_id for e in events]
            with bound_to(events[0]):
                seen["first"] = structlog.contextvars.get_contextvars()
            await super().apply(uow, commands)

    consumer = EventConsumer(
        InProcessBus(), PRODUCT_SERVICE_QUEUE, product_db.unit_of_work, Recording(product_service)
    )
    deliveries = [
        FakeDelivery.of(
            Event(
                "order.created",
                {"orderId": order_id, "productId": product.id},
                request_id=request_id,
                traceparent=None,
            )
        )
        for order_id, request_id in ((1, "req-b"), (2, "req-a"), (3, None))
    ]
    assert deliveries[0].headers == {"x-request-id": "req-b"}
    await consumer.process(deliveries)

    assert [d.outcome for d in deliveries] == ["ack", "ack", "ack"]
    assert seen["batch"]["request_ids"] == ["req-a", "req-b"]
    assert "request_id" not in seen["batch"]
    assert seen["events"] == ["req-b", "req-a", None]
    assert seen["first"]["request_id"] == "req-b"
    assert "request_id" not in structlog.contextvars.get_contextvars()  # unbound after


async def test_a_dead_lettered_message_is_logged_with_its_request_id(
    product_db: FakeProductDatabase, product_service: ProductService, logs: Logs
) -> None:
    consumer = EventConsumer(
        InProcessBus(),
        PRODUCT_SERVICE_QUEUE,
        product_db.unit_of_work,
        OrderStockHandler(product_service),
    )
    bad = FakeDelivery(b"not json", "bad-1", "order.created", headers={"x-request-id": "r-9"})
    await consumer.process([bad])
    assert bad.outcome == "dead_letter"
    [line] = [line for line in logs if line["event"] == "dead-lettering message"]
    assert line["request_id"] == "r-9"


# -- the local bus keeps the headers -------------------------------------------------------------


async def test_the_local_bus_carries_the_headers_and_opens_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:  # the table as an older version wrote it: no headers
        conn.execute(
            sa.text(
                "CREATE TABLE bus_messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "queue VARCHAR(128) NOT NULL, message_id VARCHAR(128), "
                "routing_key VARCHAR(128) NOT NULL, body BLOB NOT NULL, "
                "dead BOOLEAN NOT NULL, reason TEXT)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO bus_messages (queue, message_id, routing_key, body, dead) "
                "VALUES (:q, 'old-1', 'order.qty_confirmed', :b, 0)"
            ),
            {"q": ORDER_SERVICE_QUEUE.name, "b": b'{"pattern":"order.qty_confirmed","data":{}}'},
        )
    engine.dispose()

    bus = InProcessBus(path)
    await bus.start()
    got: list[Any] = []

    async def take(delivery: Any) -> None:
        got.append(delivery)
        await delivery.ack()

    try:
        await bus.publish(
            [
                Event(
                    "order.qty_confirmed",
                    {"orderId": 1},
                    id="new-1",
                    request_id="req-1",
                    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
            ]
        )
        await bus.consume(ORDER_SERVICE_QUEUE, take, prefetch=10)
        for _ in range(200):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await bus.close()
    assert [d.message_id for d in got] == ["old-1", "new-1"]
    assert got[0].headers is None
    assert got[1].headers == {
        "x-request-id": "req-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }

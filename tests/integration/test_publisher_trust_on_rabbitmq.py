"""Trust between the services on the real broker, with one broker user per service (as
deploy/rabbitmq/ sets them up): an event is believed only from the broker user of the
service that publishes it. A forged ``order.created`` from another user, or one without a
``user_id``, is dead-lettered (``untrusted_publisher``) and takes nothing; a ``user_id``
naming another user is refused by the broker itself; and each service's user may publish
its own events' routing keys only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import aio_pika
import aiormq
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.invariants import queue_depths
from harness.sandbox import Sandbox, ServersUnavailable
from orderstack.cache.inprocess import InProcessProductCache
from orderstack.config import load_settings
from orderstack.events import Service
from orderstack.messaging.bus import PublishError
from orderstack.messaging.consumer import EventConsumer
from orderstack.messaging.envelope import Event
from orderstack.messaging.rabbitmq import REASON_HEADER, USER_ID_HEADER, RabbitMQBus
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE
from orderstack.messaging.trust import UNTRUSTED_PUBLISHER, PublisherTrust
from orderstack.products.handlers import OrderStockHandler
from orderstack.products.repository import ProductUnitOfWork, inbox
from orderstack.products.service import ProductService
from orderstack.storage.engine import create_engine
from tests.conftest import servers_unavailable, upgrade_to_head

from .amqp import take_all, until

pytestmark = pytest.mark.integration

QUEUE = PRODUCT_SERVICE_QUEUE.name
DLQ = PRODUCT_SERVICE_QUEUE.dead_letter_queue


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """A sandbox whose services each have their own broker user (Sandbox(service_users))."""
    try:
        made = Sandbox("trust", service_users=True).create()
    except ServersUnavailable as exc:
        servers_unavailable(str(exc))
        raise
    try:
        yield made
    finally:
        made.drop()


@pytest.fixture
async def engine(sandbox: Sandbox) -> AsyncIterator[AsyncEngine]:
    # The whole topology, as the broker's definitions declare it (deploy/rabbitmq/): each
    # service's own user declares only its own queues. The sandbox's admin user does it.
    admin = RabbitMQBus(sandbox.amqp_url)
    await admin.start()
    await admin.close()
    engine = create_engine(sandbox.engine_url, pool_size=10)
    await upgrade_to_head(engine)
    yield engine
    await engine.dispose()


def service_bus(sandbox: Sandbox, service: Service) -> RabbitMQBus:
    """The bus ``service`` runs on, from the settings it is given (its own RABBITMQ_URL,
    each service's broker user)."""
    settings = load_settings(**sandbox.service_env(service))
    assert settings.amqp_url is not None
    return RabbitMQBus(settings.amqp_url, trust=PublisherTrust.from_settings(settings))


class ProductSide:
    """The product service's real consumer on its own broker user, over the sandbox's
    database: what a forged event would have to get past."""

    def __init__(self, sandbox: Sandbox, engine: AsyncEngine) -> None:
        self.bus = service_bus(sandbox, Service.PRODUCTS)
        self.service = ProductService(
            lambda: ProductUnitOfWork(engine, None), InProcessProductCache()
        )
        self.consumer = EventConsumer(
            self.bus,
            PRODUCT_SERVICE_QUEUE,
            lambda: ProductUnitOfWork(engine, None),
            OrderStockHandler(self.service),
            trust=self.bus.trust,
        )

    async def __aenter__(self) -> ProductSide:
        await self.bus.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()
        await self.bus.close()


@pytest.fixture
async def products(sandbox: Sandbox, engine: AsyncEngine) -> AsyncIterator[ProductSide]:
    async with ProductSide(sandbox, engine) as side:
        await _purge(sandbox, DLQ)
        yield side


async def _purge(sandbox: Sandbox, queue: str) -> None:
    connection = await aio_pika.connect(sandbox.amqp_url)
    try:
        channel = await connection.channel()
        await (await channel.declare_queue(queue, passive=True)).purge()
    finally:
        await connection.close()


def _order_created(order_id: int, product_id: int, quantity: int) -> bytes:
    return orjson.dumps(
        {
            "pattern": "order.created",
            "data": {
                "orderId": order_id,
                "items": [{"productId": product_id, "quantity": quantity}],
                "timestamp": "2026-12-05T10:30:00Z",
            },
        }
    )


async def _publish_as(
    sandbox: Sandbox, user: str, body: bytes, message_id: str, *, user_id: str | None
) -> None:
    """Publish ``body`` as ``order.created`` on ``user``'s own connection, confirmed."""
    connection = await aio_pika.connect(sandbox.amqp_url_of(user), timeout=5)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                user_id=user_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="order.created",
        )
    finally:
        await connection.close()


async def _dead_letters(sandbox: Sandbox, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Wait (bounded) until the dead-letter queue holds ``count`` letters; take them all."""

    async def arrived() -> bool:
        return (await queue_depths(sandbox.amqp_url))[DLQ] >= count

    await until(arrived)
    return await take_all(sandbox.amqp_url, DLQ)


async def _in_inbox(engine: AsyncEngine, event_id: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(sa.select(inbox.c.event_id).where(inbox.c.event_id == event_id))
    return found is not None


@pytest.mark.parametrize("with_user_id", [True, False], ids=["own-user-id", "no-user-id"])
async def test_a_forged_order_created_is_dead_lettered_as_untrusted_and_takes_nothing(
    sandbox: Sandbox, engine: AsyncEngine, products: ProductSide, with_user_id: bool
) -> None:
    """The review's attack: 900 units asked for an order that never existed, by someone who
    may write to the exchange (a user of the vhost, not the order service's)."""
    product = await products.service.create_product("Forged", Decimal("5"), 1000)
    forger = sandbox.add_amqp_user(f"forger{int(with_user_id)}")
    message_id = str(uuid.uuid4())

    await _publish_as(
        sandbox,
        forger,
        _order_created(987_654, product.id, 900),
        message_id,
        user_id=forger if with_user_id else None,
    )

    [letter] = await _dead_letters(sandbox, 1)
    reason = str(letter.headers[REASON_HEADER])
    assert reason.startswith(f"{UNTRUSTED_PUBLISHER}: order.created"), reason
    assert letter.message_id == message_id
    if with_user_id:  # recorded for the operator
        assert forger in reason and letter.headers[USER_ID_HEADER] == forger
    else:
        assert "no user_id" in reason and USER_ID_HEADER not in letter.headers
    assert (await products.service.get_product(product.id)).qty == 1000
    assert not await _in_inbox(engine, message_id)
    assert products.consumer.dead_lettered == 1


async def test_the_order_services_own_order_created_is_believed(
    sandbox: Sandbox, products: ProductSide
) -> None:
    """The same event from the order service's broker user takes its units (the check
    lets through what it must)."""
    product = await products.service.create_product("Genuine", Decimal("5"), 1000)
    orders = service_bus(sandbox, Service.ORDERS)
    await orders.start()
    try:
        event = Event(
            "order.created",
            {
                "orderId": 4242,
                "items": [{"productId": product.id, "quantity": 900}],
                "timestamp": "2026-12-05T10:30:00Z",
            },
        )
        await orders.publish([event])
    finally:
        await orders.close()
    deadline = asyncio.get_running_loop().time() + 15
    while (await products.service.get_product(product.id)).qty != 100:
        assert asyncio.get_running_loop().time() < deadline, "order.created not applied"
        await asyncio.sleep(0.05)
    assert products.consumer.dead_lettered == 0


async def test_a_user_id_naming_another_user_is_refused_by_the_broker(
    sandbox: Sandbox, products: ProductSide
) -> None:
    """A forger cannot borrow the order service's name: the broker refuses a ``user_id``
    that is not the connection's own user, and nothing reaches any queue."""
    product = await products.service.create_product("Borrowed name", Decimal("5"), 1000)
    forger = sandbox.add_amqp_user("impostor")
    before = await queue_depths(sandbox.amqp_url)

    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id"):
        await _publish_as(
            sandbox,
            forger,
            _order_created(987_655, product.id, 900),
            str(uuid.uuid4()),
            user_id=sandbox.service_user(Service.ORDERS),
        )

    await asyncio.sleep(0.3)  # what would have been delivered by now
    assert await queue_depths(sandbox.amqp_url) == before
    assert (await products.service.get_product(product.id)).qty == 1000


@pytest.mark.parametrize(
    ("service", "foreign"),
    [
        (Service.PRODUCTS, Event("order.created", {"orderId": 1, "productId": 1})),
        (Service.ORDERS, Event("order.qty_confirmed", {"orderId": 1})),
    ],
    ids=["product-publishes-order.created", "order-publishes-order.qty_confirmed"],
)
async def test_topic_permissions_refuse_a_service_publishing_anothers_event(
    sandbox: Sandbox, products: ProductSide, service: Service, foreign: Event
) -> None:
    bus = service_bus(sandbox, service)
    await bus.start()
    try:
        with pytest.raises(PublishError, match="ACCESS_REFUSED"):
            await bus.publish([foreign])
    finally:
        await bus.close()


async def test_a_service_user_cannot_consume_the_other_services_queue(sandbox: Sandbox) -> None:
    """Read permission on its own queues only: the order service's user cannot take the
    product service's events off its queue."""
    connection = await aio_pika.connect(
        sandbox.amqp_url_of(sandbox.service_user(Service.ORDERS)), timeout=5
    )
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(QUEUE, passive=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await queue.get(fail=False)
    finally:
        await connection.close()


async def test_a_dead_letter_is_believed_again_only_when_its_publishers_user_replays_it(
    sandbox: Sandbox, engine: AsyncEngine, products: ProductSide
) -> None:
    """`orderstack dlq replay` publishes as its own broker user. The product service's user
    may not publish an order.created at all (the broker refuses, the letter stays); the
    operator's is refused by the consumer (dead-lettered again, untrusted); the order
    service's user (which may read the dead letters of its own events) is believed."""
    product = await products.service.create_product("Replayed", Decimal("5"), 10)
    body = _order_created(4343, product.id, 3)
    message_id = str(uuid.uuid4())
    # A letter of an order the order service did publish, refused (here: sent without a
    # user_id), to be replayed once the cause is fixed.
    await _publish_as(sandbox, sandbox.service_user(Service.ORDERS), body, message_id, user_id=None)
    await _until_dead_lettered(sandbox, 1)

    products_user = service_bus(sandbox, Service.PRODUCTS)
    await products_user.start()
    try:
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="order.created"):
            await products_user.replay(QUEUE, [message_id])
    finally:
        await products_user.close()
    await _until_dead_lettered(sandbox, 1)  # still there

    for operator_url, believed in ((sandbox.amqp_url, False), (None, True)):
        operator = (
            RabbitMQBus(operator_url)
            if operator_url is not None
            else service_bus(sandbox, Service.ORDERS)
        )
        await operator.start()
        try:
            assert await operator.replay(QUEUE, [message_id]) == 1
        finally:
            await operator.close()
        if believed:
            deadline = asyncio.get_running_loop().time() + 15
            while (await products.service.get_product(product.id)).qty != 7:
                assert asyncio.get_running_loop().time() < deadline, "replay not applied"
                await asyncio.sleep(0.05)
        else:  # back, refused again
            deadline = asyncio.get_running_loop().time() + 15
            while products.consumer.dead_lettered < 2:
                assert asyncio.get_running_loop().time() < deadline, "replay not refused"
                await asyncio.sleep(0.05)
            await _until_dead_lettered(sandbox, 1)
            assert (await products.service.get_product(product.id)).qty == 10
    assert await _in_inbox(engine, message_id)


async def _until_dead_lettered(sandbox: Sandbox, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while (await queue_depths(sandbox.amqp_url))[DLQ] < count:
        assert asyncio.get_running_loop().time() < deadline, "not dead-lettered in 15 s"
        await asyncio.sleep(0.05)

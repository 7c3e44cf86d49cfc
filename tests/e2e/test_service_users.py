"""Both services as separate processes (``orderstack serve``), each logged in to RabbitMQ as
its own user with the permissions compose gives it (Sandbox(service_users=True):
messaging/trust.py ``broker_permissions``; no queue declared beforehand): orders settle and
cancel as with one shared user, each service declaring its own queues only and publishing
its own events only; an order.created from the product service's own user is refused by the
broker, and one a forger publishes is dead-lettered, nothing taken."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aio_pika
import aiormq
import httpx
import orjson
import pytest

from harness import rabbit
from harness.processes import ServiceProcess
from harness.sandbox import Sandbox, ServersUnavailable
from harness.stack import Stack
from orderstack.events import Service
from orderstack.messaging.rabbitmq import RabbitMQBus
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE
from orderstack.messaging.trust import UNTRUSTED_PUBLISHER
from tests.conftest import servers_unavailable

from .conftest import UNHURRIED
from .workflows import create_product, leaks, wait_terminal

pytestmark = pytest.mark.e2e


@dataclass
class ServiceUsersStack(Stack):
    """A Stack whose product and order replicas each get their own service's environment
    (``Sandbox.service_env``: its own RABBITMQ_URL, who publishes what)."""

    def _as(self, service: Service) -> dict[str, str]:
        return {**self._env(), **self.sandbox.service_env(service)}

    def start(self) -> Stack:
        for i in range(self.product_replicas):
            env = self._as(Service.PRODUCTS)
            self.products.append(
                ServiceProcess(f"product-{i}", ["serve", "product"], env, self.log_dir)
            )
        for i in range(self.order_replicas):
            self.orders.append(self.order_process(f"order-{i}"))
        for process in [*self.products, *self.orders]:
            process.start()
        for process in [*self.products, *self.orders]:
            process.wait_healthy()
        return self

    def order_process(self, name: str, module: str = "orderstack") -> ServiceProcess:
        env = {
            **self._as(Service.ORDERS),
            "PRODUCT_SERVICE_URL": ",".join(p.url for p in self.products),
        }
        return ServiceProcess(name, ["serve", "order"], env, self.log_dir, module=module)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        sandbox = Sandbox("users", service_users=True).create()
    except ServersUnavailable as exc:
        servers_unavailable(str(exc))
        raise
    running = ServiceUsersStack(sandbox, tmp_path_factory.mktemp("logs"), extra_env=UNHURRIED)
    try:
        running.start().wait_ready(timeout=30)
        yield running
    finally:
        running.stop()
        sandbox.drop()


async def test_orders_settle_and_cancel_with_one_broker_user_per_service(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Per-user", 5, 10)
        placed = []
        for _ in range(3):
            response = await client.post(
                f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 5}
            )
            assert response.status_code == 201, response.text
            placed.append(response.json()["id"])
        for order_id in placed:
            assert (await wait_terminal(client, stack.order_url, order_id))["status"] == "confirmed"
        cancelled = await client.post(f"{stack.order_url}/orders/{placed[0]}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        deadline = time.monotonic() + 15
        while (await client.get(f"{stack.product_url}/products/{product['id']}")).json()[
            "qty"
        ] != 8:
            assert time.monotonic() < deadline, "the cancel's units never came back"
            await asyncio.sleep(0.1)
        for process in [*stack.products, *stack.orders]:
            assert (await client.get(f"{process.url}/readyz")).status_code == 200


async def test_the_product_services_user_cannot_publish_an_order(stack: Stack) -> None:
    sandbox = stack.sandbox
    connection = await aio_pika.connect(
        sandbox.amqp_url_of(sandbox.service_user(Service.PRODUCTS)), timeout=5
    )
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="order.created"):
            await exchange.publish(
                aio_pika.Message(b'{"orderId": 1, "productId": 1}'), routing_key="order.created"
            )
    finally:
        await connection.close()


async def test_a_forgers_order_created_is_dead_lettered_by_the_product_service(
    stack: Stack,
) -> None:
    sandbox = stack.sandbox
    forger = sandbox.add_amqp_user("forger")
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Per-user target", 5, 1000)
        connection = await aio_pika.connect(sandbox.amqp_url_of(forger), timeout=5)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(EXCHANGE, ensure=False)
            body = {"orderId": 77_000_001, "items": [{"productId": product["id"], "quantity": 900}]}
            await exchange.publish(
                aio_pika.Message(orjson.dumps(body), message_id="forged-per-user", user_id=forger),
                routing_key="order.created",
            )
        finally:
            await connection.close()
        admin = RabbitMQBus(sandbox.amqp_url)  # the sandbox's operator user
        await admin.start()
        try:
            deadline = time.monotonic() + 20
            while not (
                letters := [
                    d
                    for d in await admin.dead_letters(PRODUCT_SERVICE_QUEUE.name, 100)
                    if d.message_id == "forged-per-user"
                ]
            ):
                assert time.monotonic() < deadline, "not dead-lettered"
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
        assert (letters[0].reason or "").startswith(f"{UNTRUSTED_PUBLISHER}: order.created")
        assert letters[0].user_id == forger
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 1000


def test_each_service_logged_in_as_its_own_user(stack: Stack) -> None:
    """Read from the broker: the vhost's connections are the two services' own users (were
    they on the sandbox's shared user, everything above would pass as well)."""
    services = {stack.sandbox.service_user(s) for s in Service}
    deadline = time.monotonic() + 15  # the management API lists a connection a moment late
    while not services <= (users := rabbit.connection_users(stack.sandbox.name)):
        assert time.monotonic() < deadline, users
        time.sleep(0.5)
    assert stack.sandbox.amqp_user not in users  # nobody on the shared user


def test_no_broker_password_is_in_the_services_logs(stack: Stack) -> None:
    """Each service's log, after starting, settling, refusing a forgery: none of the
    broker users' passwords, as they are or percent-encoded (RABBITMQ_URL is a secret)."""
    passwords = stack.sandbox.passwords
    assert len(passwords) >= 2  # the two services' users' (and the forger's)
    for process in [*stack.products, *stack.orders]:
        log = process.log_path.read_text(errors="replace")
        assert log, process.name
        assert leaks(log, passwords) == [], process.name

"""deploy/rabbitmq/definitions.json on the real RabbitMQ, as compose's broker loads it (its
placeholders filled as deploy/rabbitmq/entrypoint.sh fills them; its users and vhost renamed
for this test, so that nothing of the machine's node is touched): the topology is the one
the services declare, each service's user logs in and may publish its own events only, and
may not consume the other's queue."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import aio_pika
import aiormq
import pytest

from harness import broker_definitions, rabbit
from harness.sandbox import AMQP_HOST, AMQP_PORT
from orderstack.events import Service
from orderstack.messaging.bus import PublishError
from orderstack.messaging.envelope import Event
from orderstack.messaging.rabbitmq import RabbitMQBus
from orderstack.messaging.topology import ORDER_SERVICE_QUEUE, PRODUCT_SERVICE_QUEUE
from orderstack.messaging.trust import PublisherTrust

pytestmark = pytest.mark.integration


@dataclass
class Loaded:
    vhost: str
    admin: str  # the operator's user (RABBITMQ_ADMIN_USER)
    users: dict[str, str]  # the file's user name (the admin's as filled in) -> this test's
    passwords: dict[str, str]  # this test's user -> password

    def url(self, file_user: str) -> str:
        user = self.users[file_user]
        return f"amqp://{user}:{self.passwords[user]}@{AMQP_HOST}:{AMQP_PORT}/{self.vhost}"

    def trust(self) -> PublisherTrust:
        return PublisherTrust(
            {s: self.users[u] for s, u in broker_definitions.SERVICE_USERS.items()}
        )


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    if not rabbit.api_answers():
        pytest.skip("the management API does not answer (.ci/run enables it)")
    tag = f"os_defs_{secrets.token_hex(4)}"
    text = broker_definitions.DEFINITIONS_PATH.read_text(encoding="utf-8")
    admin = f"{tag}_admin"
    values = {
        "RABBITMQ_ADMIN_USER": admin,
        "RABBITMQ_ADMIN_PASSWORD": secrets.token_hex(8),
        "ORDER_SERVICE_BROKER_PASSWORD": secrets.token_hex(8),
        "PRODUCT_SERVICE_BROKER_PASSWORD": secrets.token_hex(8),
    }
    for name, value in values.items():  # as the entrypoint's sed does
        text = text.replace(f"__{name}__", value)
    document = json.loads(text)
    users = {admin: admin}
    for user in document["users"]:
        if user["name"] != admin:
            users[user["name"]] = f"{tag}_{user['name']}"
            user["name"] = users[user["name"]]
    for section in ("permissions", "topic_permissions"):
        for entry in document[section]:
            entry["user"] = users[entry["user"]]
    for section in ("permissions", "topic_permissions", "exchanges", "queues", "bindings"):
        for entry in document[section]:
            entry["vhost"] = tag
    document["vhosts"] = [{"name": tag}]
    passwords = {u["name"]: u["password"] for u in document["users"]}
    try:
        rabbit.import_definitions(document)
        yield Loaded(tag, admin, users, passwords)
    finally:
        rabbit.delete_vhost(tag)
        for user in users.values():
            rabbit.delete_user(user)


async def test_the_services_declare_the_topology_the_definitions_made(loaded: Loaded) -> None:
    """Each service's bus, on its own user, declares its queues again with its arguments:
    the broker accepts them (same arguments, configure allowed); the operator's declares all."""
    for user in (*broker_definitions.SERVICE_USERS.values(), loaded.admin):
        bus = RabbitMQBus(loaded.url(user), "quorum", loaded.trust())
        try:
            await bus.start()  # QueueTypeMismatch or ACCESS_REFUSED here otherwise
        finally:
            await bus.close()


@pytest.mark.parametrize("service", list(Service))
async def test_each_service_user_publishes_its_own_events_only(
    loaded: Loaded, service: Service
) -> None:
    user = broker_definitions.SERVICE_USERS[service]
    own, foreign = (
        (Event("order.created", {"orderId": 1, "productId": 1}), Event("order.qty_failed", {}))
        if service is Service.ORDERS
        else (Event("order.qty_failed", {"orderId": 1}), Event("order.created", {}))
    )
    bus = RabbitMQBus(loaded.url(user), "quorum", loaded.trust())
    await bus.start()
    try:
        await bus.publish([own])  # confirmed: routed to the other service's queue
        with pytest.raises(PublishError, match="ACCESS_REFUSED"):
            await bus.publish([foreign])
    finally:
        await bus.close()


@pytest.mark.parametrize("service", list(Service))
async def test_a_service_user_cannot_take_the_other_services_events(
    loaded: Loaded, service: Service
) -> None:
    other = PRODUCT_SERVICE_QUEUE if service is Service.ORDERS else ORDER_SERVICE_QUEUE
    connection = await aio_pika.connect(
        loaded.url(broker_definitions.SERVICE_USERS[service]), timeout=5
    )
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(other.name, passive=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await queue.get(fail=False)
    finally:
        await connection.close()


def test_the_operators_user_may_impersonate_and_the_services_users_may_not(
    loaded: Loaded,
) -> None:
    """migrate-queues (run as the operator) keeps each message's user_id: the broker takes
    such copies only from an `impersonator`; a service's user has no tag at all."""
    assert rabbit.user_tags(loaded.admin) == {"administrator", "impersonator"}
    for user in broker_definitions.SERVICE_USERS.values():
        assert rabbit.user_tags(loaded.users[user]) == set()

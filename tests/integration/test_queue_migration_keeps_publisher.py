"""`orderstack migrate-queues` moves messages with their AMQP ``user_id``: a message moved to
a queue of the new type is still believed by its consumer (messaging/trust.py), and the
broker accepts the copy only from the user that published it or one tagged `impersonator`
(compose's operator user: docs/security.md)."""

from __future__ import annotations

import aio_pika
import pytest

from harness.sandbox import Sandbox
from orderstack.messaging.envelope import Event
from orderstack.messaging.queue_migration import connect_first, migrate_queues
from orderstack.messaging.rabbitmq import RabbitMQBus, login_user
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE

pytestmark = pytest.mark.integration


async def test_a_moved_message_keeps_its_publishers_user_id(sandbox: Sandbox) -> None:
    classic = RabbitMQBus(sandbox.amqp_url, "classic")
    await classic.start()
    try:
        await classic.publish([Event("order.created", {"orderId": 1, "productId": 1}, id="m-1")])
    finally:
        await classic.close()

    connection = await connect_first([sandbox.amqp_url])
    try:
        moved = await migrate_queues(connection, "quorum")
    finally:
        await connection.close()
    assert any(m.action == "moved" and m.messages for m in moved), moved

    connection = await aio_pika.connect(sandbox.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(PRODUCT_SERVICE_QUEUE.name, passive=True)
        message = await queue.get(fail=False)
        assert message is not None
        await message.ack()
    finally:
        await connection.close()
    assert (message.message_id, message.user_id) == ("m-1", login_user(sandbox.amqp_url))
    bus = RabbitMQBus(sandbox.amqp_url, "quorum")
    assert bus.trust.refusal("order.created", message.user_id) is None

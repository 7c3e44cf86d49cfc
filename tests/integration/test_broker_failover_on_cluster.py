"""Several broker URLs: the bus connects to the first node that answers and, when its node
is killed (kill -9), reconnects to a live one and goes on publishing and consuming on the
quorum queues, losing nothing. On a 3-node cluster of the installed rabbitmq-server
(harness/cluster.py), started for this module and always stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from harness.cluster import RABBITMQ_BIN, RabbitCluster
from orderstack.messaging.bus import Delivery, PublishError
from orderstack.messaging.envelope import Event
from orderstack.messaging.rabbitmq import RabbitMQBus
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from tests.conftest import servers_unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a 3-node cluster started


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        servers_unavailable(f"no rabbitmq-server in {RABBITMQ_BIN}")
    running = RabbitCluster().start()
    try:
        yield running
    finally:
        running.stop()


def test_the_bus_skips_a_dead_url(cluster: RabbitCluster) -> None:
    async def scenario() -> None:
        bus = RabbitMQBus(f"amqp://guest:guest@127.0.0.1:1/,{cluster.urls[1]}")
        try:
            await bus.start()
            assert await bus.is_up()
        finally:
            await bus.close()

    asyncio.run(scenario())


def test_publishing_and_consuming_go_on_through_the_loss_of_the_node(
    cluster: RabbitCluster,
) -> None:
    asyncio.run(_through_a_node_loss(cluster))


async def _through_a_node_loss(cluster: RabbitCluster) -> None:
    received: set[str] = set()
    sent: list[str] = []
    all_received = asyncio.Event()

    async def on_delivery(delivery: Delivery) -> None:
        received.add(delivery.message_id or "")
        await delivery.ack()
        if len(sent) == 60 and set(sent) <= received:
            all_received.set()

    bus = RabbitMQBus(cluster.url)

    async def publish(n: int) -> None:
        for i in range(n):
            event = Event("order.created", {"orderId": len(sent) + 1, "productId": 1})
            for _ in range(300):  # as the relay does: an unconfirmed publish is retried
                try:
                    await bus.publish([event])
                    break
                except PublishError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"publish {i} not confirmed within 30 s")
            sent.append(event.id)

    try:
        await bus.start()
        await bus.consume(PRODUCT_SERVICE_QUEUE, on_delivery, prefetch=10)
        await publish(30)
        assert bus._connection is not None
        victim = cluster.urls.index(f"{str(bus._connection.url).rstrip('/')}/")  # its node
        await asyncio.to_thread(cluster.kill, victim)
        await publish(30)
        if set(sent) <= received:
            all_received.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_received.wait(), 30)
        assert set(sent) <= received, f"{len(set(sent) - received)} of {len(sent)} never came"
    finally:
        await bus.close()
        for i, node in enumerate(cluster.nodes):
            if not node.alive():
                await asyncio.to_thread(cluster.restart, i)

"""`orderstack migrate-queues` on a real broker holding messages: classic queues of an
earlier version become quorum queues with every message kept once, in order, with its id,
routing key and headers; a run cut short is finished by the next; a queue with a consumer
is refused. Each test has a vhost of its own (the queues' types are what is tested)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest

from harness.processes import run_command
from harness.sandbox import Sandbox
from orderstack.messaging import queue_migration
from orderstack.messaging.envelope import Event, encode
from orderstack.messaging.queue_migration import QueueInUse, migrate_queues
from orderstack.messaging.rabbitmq import QueueTypeMismatch, RabbitMQBus
from orderstack.messaging.topology import (
    ALL_QUEUES,
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    ORDER_SERVICE_QUEUE,
    PRODUCT_SERVICE_QUEUE,
)

pytestmark = pytest.mark.integration

Sent = dict[str, list[tuple[str, str, dict[str, Any]]]]  # queue -> (id, routing key, headers)


async def _classic_topology_with_messages(amqp_url: str) -> Sent:
    """The queues as the previous version declared them (classic), holding orders, answers
    (one a bare seed-style payload) and dead letters."""
    old = RabbitMQBus(amqp_url, "classic")
    await old.start()
    await old.close()
    sent: Sent = {q: [] for spec in ALL_QUEUES for q in (spec.name, spec.dead_letter_queue)}
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        dlx = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
        for i in range(40):
            name = "order.created" if i % 3 else "order.cancelled"
            event = Event(name, {"orderId": i + 1, "productId": 1})
            headers = {"x-request-id": f"req-{i}"}
            await exchange.publish(
                aio_pika.Message(encode(event), message_id=event.id, headers=headers),
                routing_key=name,
            )
            sent[PRODUCT_SERVICE_QUEUE.name].append((event.id, name, headers))
        for i in range(15):
            name = "order.qty_confirmed" if i % 2 else "order.qty_failed"
            message_id = f"answer-{i}"
            await exchange.publish(
                aio_pika.Message(b'{"orderId": %d}' % i, message_id=message_id),
                routing_key=name,
            )
            sent[ORDER_SERVICE_QUEUE.name].append((message_id, name, {}))
        for spec in ALL_QUEUES:
            for i in range(3):
                message_id = f"dead-{spec.name}-{i}"
                headers = {"x-orderstack-reason": "bad", "x-orderstack-routing-key": "x"}
                await dlx.publish(
                    aio_pika.Message(b"not json", message_id=message_id, headers=headers),
                    routing_key=spec.dead_letter_queue,
                )
                sent[spec.dead_letter_queue].append((message_id, spec.dead_letter_queue, headers))
    finally:
        await connection.close()
    return sent


async def _held(amqp_url: str) -> Sent:
    """Every message of every queue, taken and acked, in queue order."""
    held: Sent = {}
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in (q for spec in ALL_QUEUES for q in (spec.name, spec.dead_letter_queue)):
            queue = await channel.declare_queue(name, passive=True)
            held[name] = []
            while (message := await queue.get(fail=False)) is not None:
                headers = {
                    k: (v.decode() if isinstance(v, bytes) else v)
                    for k, v in (message.headers or {}).items()
                    if k != "x-delivery-count"  # set by a quorum queue on delivery
                }
                held[name].append((message.message_id or "", message.routing_key or "", headers))
    finally:
        await connection.close()
    return held


def _queues(vhost: str) -> dict[str, str]:
    """Queue name -> type, as the broker lists them."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "--no-table-headers", "name", "type"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return dict(line.split() for line in listed.splitlines() if line.strip())


def _exchanges(vhost: str) -> set[str]:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_exchanges", "-p", vhost, "--no-table-headers", "name"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {line.strip() for line in listed.splitlines() if line.strip()}


def _migrate_queues_cli(amqp_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RABBITMQ_URL": amqp_url, "QUEUE_TYPE": "quorum"}
    return run_command(["migrate-queues"], env, timeout=120)


def test_classic_queues_become_quorum_keeping_every_message_once(
    make_sandbox: Callable[[str], Sandbox],
) -> None:
    sandbox = make_sandbox("qmig")
    sent = asyncio.run(_classic_topology_with_messages(sandbox.amqp_url))
    assert set(_queues(sandbox.name).values()) == {"classic"}
    with pytest.raises(QueueTypeMismatch, match="migrate-queues"):
        asyncio.run(_start_and_close(RabbitMQBus(sandbox.amqp_url, "quorum")))

    result = _migrate_queues_cli(sandbox.amqp_url)

    assert result.returncode == 0, result.stderr
    for name, messages in sent.items():
        assert f"{name}: moved, {len(messages)} message(s) kept" in result.stdout
    # Only our queues, all quorum now; no temporary queue or exchange left behind.
    assert _queues(sandbox.name) == dict.fromkeys(sent, "quorum")
    assert not {e for e in _exchanges(sandbox.name) if "migration" in e}
    # A service of this version starts on them, then each message is there once, in order,
    # with its id, routing key and headers.
    asyncio.run(_start_and_close(RabbitMQBus(sandbox.amqp_url, "quorum")))
    held = asyncio.run(_held(sandbox.amqp_url))
    assert held == sent

    again = _migrate_queues_cli(sandbox.amqp_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": unchanged") == len(sent)


async def _start_and_close(bus: RabbitMQBus) -> None:
    try:
        await bus.start()
    finally:
        await bus.close()


def test_a_migration_cut_short_is_finished_by_the_next_run(
    make_sandbox: Callable[[str], Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = make_sandbox("qmigcut")
    sent = asyncio.run(_classic_topology_with_messages(sandbox.amqp_url))
    copy, copies = queue_migration._copy, 0

    def failing_copy(message: aio_pika.abc.AbstractIncomingMessage) -> aio_pika.Message:
        nonlocal copies
        copies += 1
        # Dead-letter queues first (3 messages each, moved out and back: 12 copies), then
        # the order queue's 15: the 25th is mid-way through its move out.
        if copies == 25:
            raise ConnectionError("cut short")
        return copy(message)

    monkeypatch.setattr(queue_migration, "_copy", failing_copy)
    with pytest.raises(ConnectionError):
        asyncio.run(_migrate(sandbox.amqp_url))
    monkeypatch.setattr(queue_migration, "_copy", copy)
    # Half-way: the old queue and the temporary one both hold messages.
    cut = _queues(sandbox.name)
    assert cut[ORDER_SERVICE_QUEUE.name] == "classic"
    assert cut[f"{ORDER_SERVICE_QUEUE.name}.migrating"] == "quorum"

    asyncio.run(_migrate(sandbox.amqp_url))

    assert _queues(sandbox.name) == dict.fromkeys(sent, "quorum")
    held = asyncio.run(_held(sandbox.amqp_url))
    for name, messages in sent.items():  # none lost, none doubled
        assert sorted(m[0] for m in held[name]) == sorted(m[0] for m in messages), name
        assert {(m[0], m[1]) for m in held[name]} == {(m[0], m[1]) for m in messages}


async def _migrate(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        await migrate_queues(connection, "quorum")
    finally:
        await connection.close()


def test_a_queue_with_a_consumer_is_not_moved(make_sandbox: Callable[[str], Sandbox]) -> None:
    sandbox = make_sandbox("qmiguse")
    asyncio.run(_refused_while_consumed(sandbox.amqp_url))
    assert _queues(sandbox.name)[PRODUCT_SERVICE_QUEUE.name] == "classic"


async def _hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A consumer that takes a delivery and never acks it."""


async def _refused_while_consumed(amqp_url: str) -> None:
    await _classic_topology_with_messages(amqp_url)
    consumer = await aio_pika.connect(amqp_url)
    try:
        channel = await consumer.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.declare_queue(PRODUCT_SERVICE_QUEUE.name, passive=True)
        await queue.consume(_hold)
        with pytest.raises(QueueInUse, match="stop the services"):
            await _migrate(amqp_url)
    finally:
        await consumer.close()

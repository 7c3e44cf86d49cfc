"""`orderstack dlq` as an operator runs it against RabbitMQ: list, show, replay (same
message_id, back on the consuming queue) and purge the consumer's dead letters."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from harness.invariants import queue_depths
from harness.processes import SERVER_VARIABLES, run_command
from harness.sandbox import Sandbox
from orderstack.messaging.bus import Delivery
from orderstack.messaging.envelope import Event
from orderstack.messaging.rabbitmq import RabbitMQBus
from orderstack.messaging.topology import PRODUCT_SERVICE_QUEUE
from tests.integration.amqp import take_all

pytestmark = pytest.mark.e2e

QUEUE = PRODUCT_SERVICE_QUEUE.name


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}
    return run_command(["dlq", *args], {**clean, **env})


async def _dead_letter(amqp_url: str, events: list[Event], reason: str) -> None:
    """Publish the events and dead-letter each delivery the way the consumer does."""
    bus = RabbitMQBus(amqp_url)
    await bus.start()
    got: asyncio.Queue[Delivery] = asyncio.Queue()
    try:

        async def on_delivery(delivery: Delivery) -> None:
            await got.put(delivery)

        await bus.consume(PRODUCT_SERVICE_QUEUE, on_delivery, prefetch=10)
        await bus.publish(events)
        for _ in events:
            await (await asyncio.wait_for(got.get(), 10)).dead_letter(reason)
        for _ in range(100):
            if (await queue_depths(amqp_url))[PRODUCT_SERVICE_QUEUE.dead_letter_queue] == len(
                events
            ):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("dead letters did not arrive")
    finally:
        await bus.close()


async def _take_all(amqp_url: str, queue: str) -> list[str | None]:
    return [message.message_id for message in await take_all(amqp_url, queue)]


def test_list_show_replay_and_purge_on_rabbitmq(make_sandbox: Callable[[str], Sandbox]) -> None:
    sandbox = make_sandbox("dlq")
    env = {"RABBITMQ_URL": sandbox.amqp_url}
    first = Event("order.created", {"orderId": 1, "productId": 7, "totalPrice": 9.5})
    second = Event("order.created", {"orderId": 2, "productId": 7, "totalPrice": 9.5})
    asyncio.run(_dead_letter(sandbox.amqp_url, [first, second], "product 7 is corrupt"))

    listed = _run("list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        (QUEUE, first.id, "order.created", "product 7 is corrupt"),
        (QUEUE, second.id, "order.created", "product 7 is corrupt"),
    ]

    shown = _run("show", first.id, "--queue", QUEUE, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "reason:      product 7 is corrupt" in shown.stdout
    assert "routing_key: order.created" in shown.stdout
    body = shown.stdout.split("bytes):\n", 1)[1]
    assert orjson.loads(body) == {"pattern": "order.created", "data": first.data}
    assert '\n  "data"' in body  # pretty-printed
    assert _run("show", "no-such-id", env=env).returncode == 1

    replayed = _run("replay", first.id, env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert f"{QUEUE}: replayed 1" in replayed.stdout
    assert asyncio.run(_take_all(sandbox.amqp_url, QUEUE)) == [first.id]

    refused = _run("purge", "--all", env=env)  # no terminal to confirm on, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purged = _run("purge", "--all", "--yes", env=env)
    assert purged.returncode == 0, purged.stderr
    assert f"{QUEUE}: purged 1" in purged.stdout
    assert _run("list", env=env).stdout.strip() == "no dead letters"


def test_replay_needs_ids_or_all_and_reports_unknown_ids(
    make_sandbox: Callable[[str], Sandbox],
) -> None:
    sandbox = make_sandbox("dlq")
    env = {"RABBITMQ_URL": sandbox.amqp_url}
    neither = _run("replay", env=env)
    assert neither.returncode == 2 and "--all" in neither.stderr
    both = _run("purge", "x", "--all", "--yes", env=env)
    assert both.returncode == 2
    missing = _run("replay", "no-such-id", env=env)
    assert missing.returncode == 1 and "1 of 1 message id(s) not found" in missing.stderr


def test_unreachable_broker_is_reported_without_the_password() -> None:
    result = _run("list", env={"RABBITMQ_URL": "amqp://user:hunter2@127.0.0.1:1/none"})
    assert result.returncode == 2
    assert "RABBITMQ_URL" in result.stderr and "hunter2" not in result.stderr


def test_embedded_default_lists_its_own_dead_letters(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/orderstack.db"}
    result = _run("list", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no dead letters"

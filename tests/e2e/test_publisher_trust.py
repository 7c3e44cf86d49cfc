"""The review's forged events, against both services as separate processes (``orderstack
serve``) on the real broker: someone who may publish to the exchange, but is not the order
service's broker user, can neither take stock with an ``order.created`` for an order that
never existed nor fail a coming order with an early ``order.cancelled``. Each is
dead-lettered with the reason ``untrusted_publisher`` and changes nothing; the orders of
the order service itself settle as before."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import httpx
import orjson
import pytest

from harness.stack import Stack
from orderstack.messaging.bus import DeadLetter
from orderstack.messaging.rabbitmq import RabbitMQBus
from orderstack.messaging.topology import EXCHANGE, PRODUCT_SERVICE_QUEUE
from orderstack.messaging.trust import UNTRUSTED_PUBLISHER

from .workflows import create_product, wait_terminal

pytestmark = pytest.mark.e2e

DLQ = PRODUCT_SERVICE_QUEUE.dead_letter_queue


async def _forge(
    stack: Stack, forger: str, key: str, data: dict[str, object], *, own_id: bool
) -> str:
    """Publish an event as ``forger`` (a user of the stack's vhost that may write to the
    exchange), with its own ``user_id`` or none; its message id."""
    message_id = f"forged-{uuid.uuid4()}"
    connection = await aio_pika.connect(stack.sandbox.amqp_url_of(forger), timeout=5)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                orjson.dumps({"pattern": key, "data": data}),
                message_id=message_id,
                user_id=forger if own_id else None,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=key,
        )
    finally:
        await connection.close()
    return message_id


async def _dead_letters(stack: Stack, message_ids: set[str]) -> dict[str, DeadLetter]:
    """These dead letters by message id, once all are in the product service's dead-letter
    queue (bounded wait); they stay where they are."""
    admin = RabbitMQBus(stack.sandbox.amqp_url)
    await admin.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            letters = {
                d.message_id: d
                for d in await admin.dead_letters(PRODUCT_SERVICE_QUEUE.name, 1000)
                if d.message_id in message_ids
            }
            if set(letters) == message_ids:
                return letters
            assert time.monotonic() < deadline, f"not dead-lettered: {message_ids - set(letters)}"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def test_a_forged_order_created_takes_nothing_and_is_dead_lettered(stack: Stack) -> None:
    forger = stack.sandbox.add_amqp_user("forger")
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Forgery target", 5, 1000)
        forged = {
            await _forge(
                stack,
                forger,
                "order.created",
                {
                    "orderId": 900_000_000 + n,
                    "items": [{"productId": product["id"], "quantity": 900}],
                    "timestamp": "2026-12-05T10:30:00Z",
                },
                own_id=own_id,
            )
            for n, own_id in enumerate((True, False))
        }
        letters = (await _dead_letters(stack, forged)).values()
        for letter in letters:
            assert (letter.reason or "").startswith(f"{UNTRUSTED_PUBLISHER}: order.created")
        # The forger's user, recorded for the operator (`orderstack dlq show`).
        assert {letter.user_id for letter in letters} == {forger, None}

        # A genuine order afterwards takes its unit: the forgeries took none.
        created = await client.post(
            f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 5}
        )
        assert created.status_code == 201, created.text
        settled = await wait_terminal(client, stack.order_url, created.json()["id"])
        assert settled["status"] == "confirmed"
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 999


async def test_a_forged_early_cancel_does_not_fail_the_order_it_names(stack: Stack) -> None:
    """The review's second finding: an ``order.cancelled`` for the next order id, sent
    before that order exists, made the order fail once placed."""
    forger = stack.sandbox.add_amqp_user("canceller")
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Early cancel", 5, 10)
        first = await client.post(
            f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 5}
        )
        assert first.status_code == 201, first.text
        await wait_terminal(client, stack.order_url, first.json()["id"])
        # Ids are handed out in order here: the next order's, and a few after it.
        upcoming = range(first.json()["id"] + 1, first.json()["id"] + 4)
        forged = {
            await _forge(
                stack,
                forger,
                "order.cancelled",
                {"orderId": order_id, "items": [{"productId": product["id"], "quantity": 1}]},
                own_id=True,
            )
            for order_id in upcoming
        }
        for letter in (await _dead_letters(stack, forged)).values():
            assert (letter.reason or "").startswith(f"{UNTRUSTED_PUBLISHER}: order.cancelled")

        second = await client.post(
            f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 5}
        )
        assert second.status_code == 201, second.text
        assert second.json()["id"] in upcoming
        settled = await wait_terminal(client, stack.order_url, second.json()["id"])
        assert settled["status"] == "confirmed", settled
        after = (await client.get(f"{stack.product_url}/products/{product['id']}")).json()
        assert after["qty"] == 8

"""Webhook deliveries on the fakes (orders/webhooks.py): Standard Webhooks signatures that the
documented receiver check accepts (and refuses when tampered with or old); a batch keeps its
webhook-id across retries, also when more changes arrived meanwhile; delays are jittered
between half and all of the doubling; a batch failing for the whole horizon is dead, its hook
paused (nothing more posted) until the dead delivery is replayed, which sends the same batch
again under the same id and then moves on; a registered secret is whsec_ and the base64 of
24 to 64 bytes, or one without the prefix (the first version's), and a made one is whsec_."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import httpx
import pytest

from orderstack.config import load_settings
from orderstack.orders.status_events import StatusEventHub
from orderstack.orders.webhooks import (
    DEAD,
    DELIVERED,
    PAUSED,
    REPLAYED,
    WebhookDispatcher,
    jittered,
    new_secret,
    retry_delay,
    signing_key,
)
from orderstack.orders.webhooks_api import webhook_router
from orderstack.web.auth import Access
from tests.unit.fakes import START, Clock, FakeStatusEventLog, FakeWebhookStore
from tests.unit.routes import route_client
from tests.unit.webhook_receiver import verify

WALL = 1_700_000_000.0
ADMIN = "adm-token-for-secrets"  # noqa: S105 - a throwaway test value


class Receiver:
    """The URL's side: answers ``status`` (settable), verifies each POST as documented."""

    def __init__(self, secret: str) -> None:
        self.secret, self.status = secret, 204
        self.ids: list[str] = []
        self.events: list[list[int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.ids.append(verify(self.secret, request.headers, request.content, now=WALL))
        self.events.append([e["id"] for e in json.loads(request.content)["events"]])
        return httpx.Response(self.status)


def _parts(
    secret: str, horizon: float = 60.0
) -> tuple[FakeStatusEventLog, FakeWebhookStore, WebhookDispatcher, Clock, Receiver]:
    log, store, clock = FakeStatusEventLog(), FakeWebhookStore(), Clock()
    receiver = Receiver(secret)
    dispatcher = WebhookDispatcher(
        store,
        StatusEventHub(log, poll=3600),
        httpx.AsyncClient(transport=httpx.MockTransport(receiver)),
        clock=clock,
        wall=lambda: WALL,
        horizon=horizon,
        batch=2,
        jitter=lambda: 1.0,
    )
    return log, store, dispatcher, clock, receiver


async def _round(dispatcher: WebhookDispatcher) -> int:
    await dispatcher._hub.read_once()
    return await dispatcher.run_once()


def test_the_documented_check_accepts_ours_and_refuses_tampering_and_old_timestamps() -> None:
    from orderstack.orders.webhooks import standard_signature

    secret = new_secret()
    assert secret.startswith("whsec_") and len(signing_key(secret)) == 32
    body = b'{"events": []}'
    headers = {
        "webhook-id": "msg_1_9",
        "webhook-timestamp": str(int(WALL)),
        "webhook-signature": "v1,bm9wZQ== "
        + standard_signature(secret, "msg_1_9", "1700000000", body),
    }
    assert verify(secret, headers, body, now=WALL) == "msg_1_9"  # the second of a list
    with pytest.raises(ValueError, match="signature"):
        verify(secret, headers, body + b" ", now=WALL)
    with pytest.raises(ValueError, match="signature"):
        verify(secret, {**headers, "webhook-id": "msg_1_10"}, body, now=WALL)
    with pytest.raises(ValueError, match="signature"):
        verify(new_secret(), headers, body, now=WALL)
    with pytest.raises(ValueError, match="old"):
        verify(secret, headers, body, now=WALL + 301)


def test_delays_are_jittered_between_half_and_all_of_the_doubling() -> None:
    assert [jittered(retry_delay(n), 0.0) for n in (1, 2, 3, 30)] == [0.5, 1, 2, 150]
    assert [jittered(retry_delay(n), 1.0) for n in (1, 2, 3, 30)] == [1, 2, 4, 300]
    assert retry_delay(10_000) == 300  # no overflow after days of failures


async def test_a_batch_keeps_its_id_across_retries_dies_after_the_horizon_and_is_replayed() -> None:
    secret = new_secret()
    log, store, dispatcher, clock, receiver = _parts(secret, horizon=60)
    hook = await store.add("http://hooks.test/", secret, None, after_id=0)
    first = [log.add(1, "pending").id, log.add(1, "confirmed").id]
    receiver.status = 503
    await _round(dispatcher)
    log.add(2, "pending")  # arrives while the first batch is failing: not added to it
    for _ in range(12):  # failing for a minute of the fake clock
        clock.advance(retry_delay(12))
        await _round(dispatcher)
    assert set(receiver.ids) == {f"msg_{hook.id}_{first[-1]}"}
    assert all(ids == first for ids in receiver.events)
    [paused] = await store.all()
    assert (paused.status, paused.after_id, paused.last_error) == (PAUSED, 0, "HTTP 503")
    [dead] = await store.deliveries(DEAD, 10)
    assert (dead.webhook_id, dead.events, dead.last_error) == (receiver.ids[0], 2, "HTTP 503")
    assert dispatcher.posts["dead"] == 1
    # Paused: nothing more is posted, however long it waits, even to a receiver back up.
    posted = len(receiver.ids)
    receiver.status = 200
    clock.advance(3600)
    assert await _round(dispatcher) == 0 and len(receiver.ids) == posted
    # Replayed: the same batch under the same id, then the rest, in order.
    assert [d.id for d in await store.replay(dead.id)] == [dead.id]
    assert await store.replay(None) == []  # nothing dead any more
    await _round(dispatcher)
    await _round(dispatcher)
    assert receiver.ids[posted:] == [dead.webhook_id, f"msg_{hook.id}_{first[-1] + 1}"]
    assert receiver.events[posted:] == [first, [first[-1] + 1]]
    assert [d.status for d in await store.deliveries(None, 10)] == [DELIVERED, DELIVERED, REPLAYED]
    [active] = await store.all()
    assert (active.status, active.after_id, active.attempts, active.delivery_upto) == (
        "active",
        first[-1] + 1,
        0,
        None,
    )


async def test_a_retry_is_never_later_than_the_horizon() -> None:
    secret = new_secret()
    log, store, dispatcher, clock, receiver = _parts(secret, horizon=10)
    await store.add("http://hooks.test/", secret, None, after_id=0)
    log.add(1, "pending")
    receiver.status = 500
    await _round(dispatcher)
    for _ in range(4):
        clock.advance(retry_delay(4))
        await _round(dispatcher)
    # 1 s, 2 s, 4 s, then 8 s capped at the horizon's end: dead at 10 s, not later.
    assert clock.now - START >= timedelta(seconds=10)
    assert (await store.all())[0].status == PAUSED


@pytest.mark.parametrize(
    ("secret", "status"),
    [
        (None, 201),  # made: whsec_ + 32 bytes
        ("whsec_" + base64.b64encode(b"k" * 24).decode(), 201),
        ("a-secret-of-the-first-version", 201),  # no prefix: its UTF-8 bytes
        ("whsec_not base64 at all!", 400),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), 400),  # a key too short
        ("whsec_" + base64.b64encode(b"k" * 65).decode()[:122], 400),
    ],
)
async def test_a_registered_secret_is_a_standard_one_or_of_the_first_version(
    secret: str | None, status: int
) -> None:
    log, store = FakeStatusEventLog(), FakeWebhookStore()
    access = Access.from_settings(load_settings(AUTH_MODE="off", ADMIN_TOKEN=ADMIN))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    body: dict[str, str] = {"url": "https://hooks.test/s"}
    if secret is not None:
        body["secret"] = secret
    async with route_client(webhook_router(access, store, log), "seed", access) as client:
        made = await client.post("/admin/webhooks", json=body, headers=admin)
        assert made.status_code == status, made.text
        if status == 201:
            shown = made.json()
            assert shown["status"] == "active"
            assert shown["secret"] == (secret or shown["secret"])
            assert secret is not None or len(signing_key(shown["secret"])) == 32
            listed = (await client.get("/admin/webhooks", headers=admin)).json()
            assert "secret" not in listed[0] and listed[0]["status"] == "active"

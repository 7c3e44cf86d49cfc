"""Webhooks on the fakes (orders/webhooks.py): a hook's URL gets the status changes after its
cursor, in id order, signed, its customer's alone; only a 2xx moves the cursor, a failure is
tried again later with the same events and a delay that doubles; one replica's claim leaves
nothing for another until the lease ends; the admin routes register, list (no secret) and
remove. The receiver is an httpx transport: the URL's side, not the thing under test."""

from __future__ import annotations

import hmac
import json
from datetime import timedelta

import httpx

from orderstack.config import load_settings
from orderstack.orders.status_events import StatusEventHub
from orderstack.orders.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDispatcher,
    retry_delay,
    signature,
)
from orderstack.orders.webhooks_api import webhook_router
from orderstack.web.auth import Access
from tests.unit.fakes import START, Clock, FakeStatusEventLog, FakeWebhookStore
from tests.unit.routes import open_access, route_client

ADMIN = "adm-token-for-hooks"  # noqa: S105 - a throwaway test value


class Receiver:
    """The URL's side: answers ``statuses`` in turn (then 204), keeps what it got."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.got: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.got.append(request)
        return httpx.Response(self.statuses.pop(0) if self.statuses else 204)

    def events(self) -> list[tuple[int, int, str]]:
        return [
            (e["id"], e["order_id"], e["status"])
            for r in self.got
            for e in json.loads(r.content)["events"]
        ]


def _parts(
    receiver: Receiver, **kwargs: object
) -> tuple[FakeStatusEventLog, FakeWebhookStore, WebhookDispatcher, Clock]:
    log, store, clock = FakeStatusEventLog(), FakeWebhookStore(), Clock()
    hub = StatusEventHub(log, poll=3600)
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    dispatcher = WebhookDispatcher(
        store,
        hub,
        client,
        clock=clock,
        wall=lambda: 1_700_000_000.0,
        jitter=lambda: 1.0,  # the longest of each jittered delay (tested on its own)
        **kwargs,  # type: ignore[arg-type]
    )
    return log, store, dispatcher, clock


async def test_the_changes_after_the_cursor_are_posted_in_order_signed() -> None:
    receiver = Receiver()
    log, store, dispatcher, _ = _parts(receiver, batch=2)
    before = log.add(1, "pending")
    hook = await store.add("http://hooks.test/a", "s" * 20, None, after_id=before.id)
    changes = [log.add(2, "pending"), log.add(2, "confirmed"), log.add(1, "failed")]
    await dispatcher._hub.open()
    await dispatcher._hub.read_once()
    while (await store.all())[0].after_id < changes[-1].id:
        assert await dispatcher.run_once() == 1
    assert receiver.events() == [(e.id, e.order_id, e.status) for e in changes]
    assert [len(json.loads(r.content)["events"]) for r in receiver.got] == [2, 1]
    first = receiver.got[0]
    expected = signature(hook.secret, first.headers[TIMESTAMP_HEADER], first.content)
    assert hmac.compare_digest(first.headers[SIGNATURE_HEADER], expected)
    assert first.headers[TIMESTAMP_HEADER] == "1700000000"
    await dispatcher.stop()


async def test_a_customers_hook_gets_its_orders_alone_and_moves_past_the_others() -> None:
    receiver = Receiver()
    log, store, dispatcher, _ = _parts(receiver)
    await store.add("http://hooks.test/b", "s" * 20, "alice", after_id=0)
    mine = log.add(1, "pending", "alice")
    log.add(2, "pending", "bob")
    await dispatcher.run_once()  # opens the hub: its reader starts at the last id
    await dispatcher._hub.read_once()
    await dispatcher.run_once()
    assert receiver.events() == [(mine.id, 1, "pending")]
    theirs = log.add(3, "confirmed", "bob")
    await dispatcher._hub.read_once()
    await dispatcher.run_once()
    assert len(receiver.got) == 1  # nothing posted for bob's change
    assert (await store.all())[0].after_id == theirs.id  # but the cursor moved past it
    await dispatcher.stop()


async def test_only_a_2xx_moves_the_cursor_and_a_failure_is_tried_again_later() -> None:
    receiver = Receiver(500, 503)
    log, store, dispatcher, clock = _parts(receiver)
    await store.add("http://hooks.test/c", "s" * 20, None, after_id=0)
    event = log.add(1, "pending")
    await dispatcher.run_once()
    await dispatcher._hub.read_once()
    await dispatcher.run_once()  # 500
    hook = (await store.all())[0]
    assert (hook.after_id, hook.attempts, hook.last_error) == (0, 1, "HTTP 500")
    assert store.next_attempt[hook.id] == START + timedelta(seconds=retry_delay(1))
    assert await dispatcher.run_once() == 0  # not due yet
    clock.advance(1)
    await dispatcher.run_once()  # 503: the delay doubles
    assert store.next_attempt[hook.id] == clock.now + timedelta(seconds=2)
    clock.advance(2)
    await dispatcher.run_once()  # 204
    hook = (await store.all())[0]
    assert (hook.after_id, hook.attempts, hook.last_error) == (event.id, 0, None)
    assert receiver.events() == [(event.id, 1, "pending")] * 3  # the same batch again
    assert dispatcher.posts == {"acknowledged": 1, "failed": 2, "dead": 0}  # on /metrics
    assert [retry_delay(n) for n in (1, 2, 3, 20)] == [1, 2, 4, 300]
    await dispatcher.stop()


async def test_a_url_that_does_not_answer_is_a_failure() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("no answer", request=request)

    log, store, clock = FakeStatusEventLog(), FakeWebhookStore(), Clock()
    hub = StatusEventHub(log, poll=3600)
    client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    dispatcher = WebhookDispatcher(store, hub, client, clock=clock)
    await store.add("http://hooks.test/d", "s" * 20, None, after_id=0)
    log.add(1, "pending")
    await dispatcher.run_once()
    await hub.read_once()
    await dispatcher.run_once()
    hook = (await store.all())[0]
    assert (hook.after_id, hook.last_error) == (0, "ConnectTimeout")
    await dispatcher.stop()


async def test_a_claimed_hook_is_not_claimed_again_until_its_lease_ends() -> None:
    store = FakeWebhookStore()
    await store.add("http://hooks.test/e", "s" * 20, None, after_id=0)
    lease = START + timedelta(seconds=11)
    assert len(await store.claim(START, lease, 10)) == 1
    assert await store.claim(START + timedelta(seconds=10), lease, 10) == []
    assert len(await store.claim(lease, lease + timedelta(seconds=11), 10)) == 1


async def test_the_admin_routes_register_list_and_remove() -> None:
    log, store = FakeStatusEventLog(), FakeWebhookStore()
    log.add(1, "pending")
    router = webhook_router(open_access(), store, log)
    async with route_client(router, "seed") as client:
        # With authentication off the admin routes need the admin token: none here.
        assert (await client.get("/admin/webhooks")).status_code in (401, 403)
    access = Access.from_settings(load_settings(AUTH_MODE="off", ADMIN_TOKEN=ADMIN))
    router = webhook_router(access, store, log)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with route_client(router, "seed", access) as client:
        made = await client.post(
            "/admin/webhooks", json={"url": "https://hooks.test/f"}, headers=admin
        )
        assert made.status_code == 201
        body = made.json()
        assert body["after_id"] == 1 and len(body["secret"]) >= 32  # from the next change
        listed = (await client.get("/admin/webhooks", headers=admin)).json()
        assert [h["url"] for h in listed] == ["https://hooks.test/f"]
        assert "secret" not in listed[0]
        bad = await client.post("/admin/webhooks", json={"url": "ftp://x"}, headers=admin)
        assert bad.status_code == 400
        gone = await client.delete(f"/admin/webhooks/{body['id']}", headers=admin)
        assert gone.status_code == 204
        again = await client.delete(f"/admin/webhooks/{body['id']}", headers=admin)
        assert again.status_code == 404

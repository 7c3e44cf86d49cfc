"""Webhooks: order status changes posted to the URLs an admin registered (``ORDER_WEBHOOKS``).

A hook (``order_webhooks``) is a URL, a secret, and optionally a customer: it is sent every
status change of that customer's orders (of every order without one), read from
``order_status_events`` as the streams read it (orders/status_events.py: in id order, an id
passed only once every id below it was read), in batches of up to ``batch`` events, signed
in the Standard Webhooks convention (standardwebhooks.com), so that its libraries verify it:

    POST <url>
    Content-Type: application/json
    webhook-id: msg_<hook id>_<last event id of the batch>   (the same on every retry)
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256 of "<webhook-id>.<timestamp>.<body>">
    X-Orderstack-Webhook / -Timestamp / -Signature: the first version's (sha256=<hex> of
                                                    "<timestamp>.<body>"), kept for receivers
                                                    written against it

    {"events": [{"id": <event id>, "order_id": 7, "status": "confirmed", "at": "…",
                 "customer_id": "alice"}, …]}

The key is the secret's bytes after ``whsec_``, base64-decoded (what the convention's
libraries do with a ``whsec_`` secret); a secret without that prefix (a hook registered
before) is its UTF-8 bytes.

A batch is fixed before its first POST (``delivery_upto``, one conditional UPDATE): a retry,
on this replica or another, sends the same events under the same ``webhook-id``, so the
receiver drops a duplicate by that id. Any 2xx acknowledges it: ``after_id`` moves to its
last event id and the delivery is recorded ``delivered``. Anything else (another status, no
answer within ``timeout``) is tried again after a jittered exponential delay (1 s, 2 s, 4 s …
300 s at most, each between half and all of that, so that hooks failing together do not
retry together); later events wait (a hook's events stay in order). When a batch has failed
for ``horizon`` seconds (``ORDER_WEBHOOK_RETRY_HORIZON_SECONDS``, a day by default) it is
recorded ``dead`` and the hook is **paused**, its cursor kept: nothing is skipped, and
nothing is posted to a URL that has refused for a day until an operator replays the dead
delivery (``orderstack webhooks replay``), which resumes the hook from it. Moving on past a
dead batch would deliver later changes of an order before earlier ones, and with one batch
in flight per hook every later batch would wait out its own day anyway.

Delivery is at least once: a replica that dies after the POST and before recording it, or an
answer lost on the way, makes the batch come again (same id).

Every replica runs a dispatcher; a hook is delivered by one at a time: a replica claims a due
active hook by moving its ``next_attempt_at`` past the delivery's longest time (a lease, one
conditional UPDATE), and records the outcome only if ``after_id`` is still what it read.
With no hook registered, a dispatcher reads one indexed row range per ``poll`` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import orjson
import structlog

from orderstack import wire
from orderstack.orders.status_events import StatusEvent, StatusEventHub, TooManyStreams
from orderstack.periodic import cancel_and_wait, raise_if_cancelled
from orderstack.storage.types import utcnow

log = structlog.get_logger(__name__)

MAX_DELAY_SECONDS = 300.0
DEFAULT_HORIZON_SECONDS = 86_400.0
SIGNATURE_HEADER = "X-Orderstack-Signature"
TIMESTAMP_HEADER = "X-Orderstack-Timestamp"
HOOK_HEADER = "X-Orderstack-Webhook"
ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the convention's prefix, not a secret
ACTIVE, PAUSED = "active", "paused"
DELIVERED, DEAD, REPLAYED = "delivered", "dead", "replayed"


@dataclass(frozen=True, slots=True)
class Webhook:
    id: int
    url: str
    secret: str
    customer_id: str | None
    after_id: int
    attempts: int = 0
    last_error: str | None = None
    status: str = ACTIVE
    delivery_upto: int | None = None  # the batch in flight: events (after_id, delivery_upto]
    failing_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A batch settled (``order_webhook_deliveries``): delivered, dead (its hook paused), or
    dead and then replayed. ``id`` is 0 until stored."""

    id: int
    hook_id: int
    after_id: int
    upto_id: int
    events: int
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    settled_at: datetime

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.hook_id, self.upto_id)


class WebhookStore(Protocol):
    """``order_webhooks`` (orders/repository.py ``SqlWebhookStore``)."""

    async def add(
        self, url: str, secret: str, customer_id: str | None, after_id: int
    ) -> Webhook: ...

    async def all(self) -> list[Webhook]: ...

    async def remove(self, hook_id: int) -> bool: ...

    async def claim(self, now: datetime, lease_until: datetime, limit: int) -> list[Webhook]:
        """Due active hooks (``next_attempt_at`` NULL or past), each leased to the caller until
        ``lease_until``: one the caller did not get (another replica did) is not returned."""
        ...

    async def settle(
        self,
        hook: Webhook,
        *,
        after_id: int,
        attempts: int,
        next_attempt_at: datetime | None,
        error: str | None,
        delivery_upto: int | None = None,
        failing_since: datetime | None = None,
        status: str = ACTIVE,
        record: Delivery | None = None,
    ) -> bool:
        """Record an outcome (and ``record``, in the same transaction), if the hook's
        ``after_id`` is still ``hook.after_id``."""
        ...

    async def begin(self, hook: Webhook, upto: int) -> bool:
        """Fix the batch in flight at (``after_id``, ``upto``], if none is and ``after_id``
        is still ``hook.after_id``."""
        ...

    async def deliveries(self, status: str | None, limit: int) -> list[Delivery]:
        """The newest settled deliveries first (of that status when given)."""
        ...

    async def replay(self, delivery_id: int | None) -> list[Delivery]:
        """Dead deliveries (that one, or all) marked ``replayed``, each hook made active
        and due at once from that batch; returns those replayed (a dead delivery whose
        hook was removed, or has moved on, is not)."""
        ...


def webhook_id(hook_id: int, upto: int) -> str:
    """A batch's ``webhook-id``: its hook and last event id, so every retry has it."""
    return f"msg_{hook_id}_{upto}"


def new_secret() -> str:
    """``whsec_`` and 32 random bytes in base64, as the Standard Webhooks convention makes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of ``secret`` (module docstring)."""
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """``v1,<base64>``: HMAC-SHA256 of ``<id>.<timestamp>.<body>`` (Standard Webhooks)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` (a receiver recomputes it,
    compares in constant time, and refuses an old timestamp: a replay)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def retry_delay(attempts: int) -> float:
    """After the ``attempts``-th failure in a row: 1 s, 2 s, 4 s, … 300 s at most (before
    the jitter: ``jittered``)."""
    return min(MAX_DELAY_SECONDS, 2.0 ** min(30, max(0, attempts - 1)))


def jittered(delay: float, draw: float) -> float:
    """Between half of ``delay`` and all of it (``draw`` in [0, 1]): hooks that failed
    together (their receiver's outage) spread their retries instead of arriving at once."""
    return delay * (0.5 + 0.5 * draw)


def _event_json(event: StatusEvent) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": event.id,
        "order_id": event.order_id,
        "status": event.status,
        "at": wire.timestamp(event.at),
    }
    if event.customer_id is not None:
        body["customer_id"] = event.customer_id
    return body


class WebhookDispatcher:
    """This replica's deliveries (module docstring); a Background of the order service."""

    def __init__(
        self,
        store: WebhookStore,
        hub: StatusEventHub,
        client: httpx.AsyncClient,
        *,
        poll: float = 1.0,
        timeout: float = 5.0,
        batch: int = 100,
        hooks_per_round: int = 20,
        horizon: float = DEFAULT_HORIZON_SECONDS,
        clock: Callable[[], datetime] = utcnow,
        wall: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._store, self._hub, self._client = store, hub, client
        self.poll, self.timeout, self.batch = poll, timeout, batch
        self.horizon, self._jitter = horizon, jitter
        self._per_round = hooks_per_round
        self._clock, self._wall = clock, wall
        self._task: asyncio.Task[None] | None = None
        self._watching = False
        # For /metrics: POSTs acknowledged (a 2xx) and failed (then tried again, or dead).
        self.posts: Counter[str] = Counter({"acknowledged": 0, "failed": 0, "dead": 0})

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._watching:
            self._watching = False
            self._hub.release()

    async def _run(self) -> None:
        while True:
            acknowledged = self.posts["acknowledged"]
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: try again next round
                raise_if_cancelled()
                log.warning("webhook round failed", error=str(exc))
            if self.posts["acknowledged"] == acknowledged:
                # Nothing delivered: wait. A round that delivered goes on at once, so a
                # busy hook gets a batch per round trip, not one per ``poll``.
                await asyncio.sleep(self.poll)

    async def run_once(self) -> int:
        """One round: claim the due hooks and deliver to each (concurrently); returns how
        many hooks were claimed."""
        now = self._clock()
        lease = now + timedelta(seconds=self.timeout * 2 + self.poll)
        hooks = await self._store.claim(now, lease, self._per_round)
        if not hooks:
            return 0
        if not self._watching:
            # The hub's reader runs while this replica has hooks to deliver (it passes
            # ids in order, as for the streams). Counted as a stream.
            try:
                await self._hub.open()
            except TooManyStreams:
                return 0  # the hooks' leases run out: another replica, or the next round
            self._watching = True
        await asyncio.gather(*(self._deliver(hook) for hook in hooks))
        return len(hooks)

    async def _deliver(self, hook: Webhook) -> None:
        events, cursor = await self._hub.read(
            hook.after_id, customer_id=hook.customer_id, limit=self.batch
        )
        upto = hook.delivery_upto
        if upto is not None:  # a retry: the same batch
            events = [e for e in events if e.id <= upto]
            if cursor < upto and (not events or events[-1].id < upto):
                # This replica's reader is not that far yet: due again next round.
                await self._again(hook, self._clock())
                return
        else:
            events = events[: self.batch]
            if not events:
                # Nothing for this hook (or only other customers' changes): move past them.
                await self._store.settle(
                    hook, after_id=cursor, attempts=0, next_attempt_at=None, error=None
                )
                return
            upto = events[-1].id
            if not await self._store.begin(hook, upto):
                return  # removed, or settled by another replica after a lease ran out
        body = orjson.dumps({"events": [_event_json(e) for e in events]})
        stamp = str(int(self._wall()))
        msg_id = webhook_id(hook.id, upto)
        error: str | None = None
        try:
            answer = await self._client.post(
                hook.url,
                content=body,
                headers={
                    "content-type": "application/json",
                    ID_HEADER: msg_id,
                    STANDARD_TIMESTAMP_HEADER: stamp,
                    STANDARD_SIGNATURE_HEADER: standard_signature(hook.secret, msg_id, stamp, body),
                    HOOK_HEADER: str(hook.id),
                    TIMESTAMP_HEADER: stamp,
                    SIGNATURE_HEADER: signature(hook.secret, stamp, body),
                },
                timeout=self.timeout,
            )
            if not 200 <= answer.status_code < 300:
                error = f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        now = self._clock()
        since = hook.failing_since or now
        attempts = hook.attempts + 1

        def record(status: str) -> Delivery:
            return Delivery(
                id=0,
                hook_id=hook.id,
                after_id=hook.after_id,
                upto_id=upto,
                events=len(events),
                status=status,
                attempts=attempts,
                last_error=error[:255] if error else None,
                created_at=since,
                settled_at=now,
            )

        if error is None:
            self.posts["acknowledged"] += 1
            await self._store.settle(
                hook,
                after_id=upto,
                attempts=0,
                next_attempt_at=None,
                error=None,
                record=record(DELIVERED),
            )
            return
        self.posts["failed"] += 1
        failed = functools.partial(
            self._store.settle,
            hook,
            after_id=hook.after_id,  # the same events go again, or are replayed
            attempts=attempts,
            error=error[:255],
            delivery_upto=upto,
            failing_since=since,
        )
        if (now - since).total_seconds() >= self.horizon:
            log.warning(
                "webhook delivery dead: hook paused",
                hook_id=hook.id,
                webhook_id=msg_id,
                error=error,
                attempts=attempts,
            )
            if await failed(next_attempt_at=None, status=PAUSED, record=record(DEAD)):
                self.posts["dead"] += 1  # once recorded: what an operator can replay
            return
        delay = jittered(retry_delay(attempts), self._jitter())
        due = min(now + timedelta(seconds=delay), since + timedelta(seconds=self.horizon))
        log.info("webhook delivery failed", hook_id=hook.id, error=error, retry_in=delay)
        await failed(next_attempt_at=due)

    async def _again(self, hook: Webhook, due: datetime) -> None:
        await self._store.settle(
            hook,
            after_id=hook.after_id,
            attempts=hook.attempts,
            next_attempt_at=due,
            error=hook.last_error,
            delivery_upto=hook.delivery_upto,
            failing_since=hook.failing_since,
        )


def hooks_json(hooks: Sequence[Webhook]) -> list[dict[str, Any]]:
    """What ``GET /admin/webhooks`` shows of each hook: never its secret."""
    return [
        {
            "id": h.id,
            "url": h.url,
            "customer_id": h.customer_id,
            "after_id": h.after_id,
            "attempts": h.attempts,
            "last_error": h.last_error,
            "status": h.status,
        }
        for h in hooks
    ]


def deliveries_json(deliveries: Sequence[Delivery]) -> list[dict[str, Any]]:
    return [
        {
            "id": d.id,
            "webhook_id": d.webhook_id,
            "hook_id": d.hook_id,
            "after_id": d.after_id,
            "upto_id": d.upto_id,
            "events": d.events,
            "status": d.status,
            "attempts": d.attempts,
            "last_error": d.last_error,
            "created_at": wire.timestamp(d.created_at),
            "settled_at": wire.timestamp(d.settled_at),
        }
        for d in deliveries
    ]


__all__ = [
    "Delivery",
    "WebhookDispatcher",
    "deliveries_json",
    "jittered",
    "new_secret",
    "signing_key",
    "standard_signature",
    "webhook_id",
    "Webhook",
    "WebhookStore",
    "hooks_json",
    "retry_delay",
    "signature",
]

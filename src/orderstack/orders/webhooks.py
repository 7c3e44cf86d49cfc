"""Webhooks: order status changes posted to the URLs an admin registered (``ORDER_WEBHOOKS``).

A hook (``order_webhooks``) is a URL, a secret, and optionally a customer: it is sent every
status change of that customer's orders (of every order without one), read from
``order_status_events`` as the streams read it (orders/status_events.py: in id order, an id
passed only once every id below it was read), in batches of up to ``batch`` events:

    POST <url>
    Content-Type: application/json
    X-Orderstack-Webhook: <hook id>
    X-Orderstack-Timestamp: <unix seconds>
    X-Orderstack-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>

    {"events": [{"id": <event id>, "order_id": 7, "status": "confirmed", "at": "…",
                 "customer_id": "alice"}, …]}

Any 2xx acknowledges the batch: the hook's ``after_id`` moves to its last event id. Anything
else (another status, no answer within ``timeout``) is tried again after a delay that doubles
from 1 s up to 5 minutes; later events wait (a hook's events stay in order). Delivery is at
least once: a replica that dies after the POST and before recording it, or an answer lost on
the way, makes the batch come again, so a receiver skips event ids it has seen.

Every replica runs a dispatcher; a hook is delivered by one at a time: a replica claims a due
hook by moving its ``next_attempt_at`` past the delivery's longest time (a lease, one
conditional UPDATE), and records the outcome only if ``after_id`` is still what it read.
With no hook registered, a dispatcher reads one indexed row range per ``poll`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
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
from orderstack.storage.types import utcnow

log = structlog.get_logger(__name__)

MAX_DELAY_SECONDS = 300.0
SIGNATURE_HEADER = "X-Orderstack-Signature"
TIMESTAMP_HEADER = "X-Orderstack-Timestamp"
HOOK_HEADER = "X-Orderstack-Webhook"


@dataclass(frozen=True, slots=True)
class Webhook:
    id: int
    url: str
    secret: str
    customer_id: str | None
    after_id: int
    attempts: int = 0
    last_error: str | None = None


class WebhookStore(Protocol):
    """``order_webhooks`` (orders/repository.py ``SqlWebhookStore``)."""

    async def add(
        self, url: str, secret: str, customer_id: str | None, after_id: int
    ) -> Webhook: ...

    async def all(self) -> list[Webhook]: ...

    async def remove(self, hook_id: int) -> bool: ...

    async def claim(self, now: datetime, lease_until: datetime, limit: int) -> list[Webhook]:
        """Due hooks (``next_attempt_at`` NULL or past), each leased to the caller until
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
    ) -> bool:
        """Record an outcome, if the hook's ``after_id`` is still ``hook.after_id``."""
        ...


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>`` (a receiver recomputes it,
    compares in constant time, and refuses an old timestamp: a replay)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def retry_delay(attempts: int) -> float:
    """After the ``attempts``-th failure in a row: 1 s, 2 s, 4 s, … 300 s at most."""
    return min(MAX_DELAY_SECONDS, 2.0 ** max(0, attempts - 1))


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
        clock: Callable[[], datetime] = utcnow,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store, self._hub, self._client = store, hub, client
        self.poll, self.timeout, self.batch = poll, timeout, batch
        self._per_round = hooks_per_round
        self._clock, self._wall = clock, wall
        self._task: asyncio.Task[None] | None = None
        self._watching = False
        # For /metrics: POSTs acknowledged (a 2xx) and failed (then tried again).
        self.posts: Counter[str] = Counter({"acknowledged": 0, "failed": 0})

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._watching:
            self._watching = False
            self._hub.release()

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: try again next round
                log.warning("webhook round failed", error=str(exc))
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
        events = events[: self.batch]
        if events:
            cursor = events[-1].id
        if not events:
            # Nothing for this hook (or only other customers' changes): move past them.
            await self._store.settle(
                hook, after_id=cursor, attempts=0, next_attempt_at=None, error=None
            )
            return
        body = orjson.dumps({"events": [_event_json(e) for e in events]})
        stamp = str(int(self._wall()))
        error: str | None = None
        try:
            answer = await self._client.post(
                hook.url,
                content=body,
                headers={
                    "content-type": "application/json",
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
        if error is None:
            self.posts["acknowledged"] += 1
            await self._store.settle(
                hook, after_id=cursor, attempts=0, next_attempt_at=None, error=None
            )
            return
        self.posts["failed"] += 1
        attempts = hook.attempts + 1
        delay = retry_delay(attempts)
        log.info("webhook delivery failed", hook_id=hook.id, error=error, retry_in=delay)
        await self._store.settle(
            hook,
            after_id=hook.after_id,
            attempts=attempts,
            next_attempt_at=self._clock() + timedelta(seconds=delay),
            error=error[:255],
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
        }
        for h in hooks
    ]


__all__ = [
    "WebhookDispatcher",
    "Webhook",
    "WebhookStore",
    "hooks_json",
    "retry_delay",
    "signature",
]

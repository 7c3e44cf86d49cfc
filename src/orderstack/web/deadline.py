"""Every request has a deadline (``REQUEST_TIMEOUT_SECONDS``): past it, a quick 503.

The database's own bounds end most waits first (row, table and metadata locks, a COMMIT
held by a global read lock: storage/engine.py); the deadline is the bound on their sum and on
everything else a request may wait for, so that a stalled dependency never hangs a client.

What the answer says depends on how far the request got (storage/outcome.py):
- nothing of it had reached COMMIT: ``REQUEST_TIMEOUT``, nothing changed, retry as it is;
- a COMMIT of its writes had started (a write method only): ``COMMIT_OUTCOME_UNKNOWN``, it
  may have taken effect; retried with the same ``Idempotency-Key``, ``POST /orders`` answers
  the one order it made, never a second.
Both carry ``Retry-After``. Probes and ``/metrics`` have bounds of their own and pass, as do
event streams (web/streams.py).

A write whose client goes away once its body has arrived is cut the same way, with nobody
to answer: work for a client that has gone is dropped before its COMMIT where it has not
reached one (an order still waiting for the intake's next batch is never written).
"""

from __future__ import annotations

import asyncio

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderstack.storage.outcome import RequestOutcome, current_outcome
from orderstack.web.errors import ErrorStyle, error_body
from orderstack.web.limits import LimitCounts, send_json
from orderstack.web.streams import is_event_stream

log = structlog.get_logger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestDeadline:
    def __init__(
        self,
        app: ASGIApp,
        *,
        seconds: float,
        style: ErrorStyle,
        exempt: frozenset[str] = frozenset({"/livez", "/health", "/readyz", "/metrics"}),
        counts: LimitCounts | None = None,
    ) -> None:
        self.app, self.seconds, self.style, self.exempt = app, seconds, style, exempt
        self.counts = counts or LimitCounts()
        self._retry_after = str(max(1, round(min(seconds, 5)))).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt or is_event_stream(scope):
            await self.app(scope, receive, send)  # bounded otherwise (web/streams.py)
            return
        outcome = RequestOutcome()
        token = current_outcome().set(outcome)
        answering = False
        gone = False  # the client went away before its answer: the request was cut for it
        watcher: asyncio.Task[None] | None = None
        request = asyncio.current_task()

        async def send_seen(message: Message) -> None:
            nonlocal answering
            if message["type"] == "http.response.start":
                answering = True
            await send(message)

        async def watch_client() -> None:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and not answering and request is not None:
                gone = True
                request.cancel()

        async def receive_watched() -> Message:
            # Once a write's body has arrived, the next message can only say the client
            # went away: then the work for it stops, before its COMMIT where it has not
            # reached one (the order intake drops a caller still waiting for its batch).
            nonlocal watcher
            message = await receive()
            last = message["type"] == "http.request" and not message.get("more_body", False)
            if last and watcher is None:
                watcher = asyncio.create_task(watch_client())
            return message

        watched = receive if scope["method"] in SAFE_METHODS else receive_watched
        try:
            async with asyncio.timeout(self.seconds) as deadline:
                await self.app(scope, watched, send_seen)
        except TimeoutError:
            if not deadline.expired():
                raise  # a TimeoutError of the app's own, not the deadline's
            self.counts.timed_out += 1
            if answering:
                return  # cut mid-answer: the client sees the connection close
            await self._answer(scope, send, outcome)
        except asyncio.CancelledError:
            if not gone or request is None:
                raise  # a stop, not the client leaving
            request.uncancel()
            self.counts.client_gone += 1
        finally:
            if watcher is not None:
                watcher.cancel()
            current_outcome().reset(token)

    async def _answer(self, scope: Scope, send: Send, outcome: RequestOutcome) -> None:
        if outcome.commit_started and scope["method"] not in SAFE_METHODS:
            code = "COMMIT_OUTCOME_UNKNOWN"
            message = (
                f"no answer within {self.seconds:g} s while the change was being committed:"
                " it may or may not have taken effect; retry with the same Idempotency-Key"
            )
        else:
            code = "REQUEST_TIMEOUT"
            message = f"no answer within {self.seconds:g} s; nothing was changed, retry later"
        log.warning("request deadline passed", path=scope["path"], code=code)
        await send_json(
            send,
            503,
            error_body(self.style, 503, code, message, coded=True),
            [(b"retry-after", self._retry_after)],
        )


__all__ = ["RequestDeadline"]

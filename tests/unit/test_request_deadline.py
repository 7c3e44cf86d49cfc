"""Every request has a deadline: past it a quick 503 that says whether anything may have
changed (web/deadline.py, storage/outcome.py, the intake's Batcher)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from orderstack.batching import Batcher
from orderstack.storage.outcome import RequestOutcome, commit_started, current_outcome
from orderstack.web.deadline import RequestDeadline
from orderstack.web.errors import ErrorStyle, install_error_handlers
from orderstack.web.limits import LimitCounts

DEADLINE = 0.2


def app_with_deadline(style: ErrorStyle = "seed", counts: LimitCounts | None = None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, style)
    gate = asyncio.Event()  # never set: the stalled dependency

    @app.get("/slow")
    async def slow_read() -> dict[str, str]:
        await gate.wait()
        return {}

    @app.post("/slow-before-commit")
    async def slow_before_commit() -> dict[str, str]:
        await gate.wait()  # stuck on a lock, before any COMMIT
        return {}

    @app.post("/slow-in-commit")
    async def slow_in_commit() -> dict[str, str]:
        commit_started()
        await gate.wait()  # COMMIT held by a global read lock
        return {}

    @app.get("/fast")
    async def fast() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/own-timeout")
    async def own_timeout() -> dict[str, str]:
        raise TimeoutError("the app's own")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        await asyncio.sleep(DEADLINE * 2)
        return {"status": "ready"}

    app.add_middleware(RequestDeadline, seconds=DEADLINE, style=style, counts=counts)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    # As a server would: the app's answer to an error it re-raises is what the client gets.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_a_read_past_its_deadline_is_a_quick_503_request_timeout() -> None:
    counts = LimitCounts()
    async with client(app_with_deadline(counts=counts)) as http:
        started = asyncio.get_running_loop().time()
        answer = await http.get("/slow")
        took = asyncio.get_running_loop().time() - started

    assert answer.status_code == 503
    assert answer.json()["code"] == "REQUEST_TIMEOUT"
    assert answer.headers["retry-after"] == "1"
    assert took < DEADLINE + 1.0
    assert counts.timed_out == 1


async def test_a_write_cut_before_its_commit_says_nothing_changed() -> None:
    async with client(app_with_deadline()) as http:
        answer = await http.post("/slow-before-commit")

    assert (answer.status_code, answer.json()["code"]) == (503, "REQUEST_TIMEOUT")


@pytest.mark.parametrize("style", ["seed", "nest"])
async def test_a_write_cut_during_its_commit_says_the_outcome_is_unknown(
    style: ErrorStyle,
) -> None:
    async with client(app_with_deadline(style)) as http:
        answer = await http.post("/slow-in-commit")

    assert answer.status_code == 503
    assert answer.json()["code"] == "COMMIT_OUTCOME_UNKNOWN"  # in both error styles
    assert "Idempotency-Key" in str(answer.json())


async def test_requests_within_the_deadline_and_probes_are_untouched() -> None:
    counts = LimitCounts()
    async with client(app_with_deadline(counts=counts)) as http:
        fast = await http.get("/fast")
        probe = await http.get("/readyz")  # slower than the deadline: probes have their own

    assert (fast.status_code, fast.json()) == (200, {"ok": "yes"})
    assert (probe.status_code, probe.json()) == (200, {"status": "ready"})
    assert counts.timed_out == 0


async def test_an_apps_own_timeout_error_is_not_taken_for_the_deadline() -> None:
    counts = LimitCounts()
    async with client(app_with_deadline(counts=counts)) as http:
        answer = await http.get("/own-timeout")

    assert answer.json()["code"] != "REQUEST_TIMEOUT"  # the app's error handlers answered
    assert counts.timed_out == 0


async def test_each_request_has_its_own_outcome_and_none_leaks_after_it() -> None:
    async with client(app_with_deadline()) as http:
        in_commit, before = await asyncio.gather(
            http.post("/slow-in-commit"), http.post("/slow-before-commit")
        )

    assert in_commit.json()["code"] == "COMMIT_OUTCOME_UNKNOWN"
    assert before.json()["code"] == "REQUEST_TIMEOUT"
    assert current_outcome().get() is None


# -- the intake: a caller that gives up --------------------------------------------------


class SlowStore:
    """A write that takes a while (a COMMIT held by a lock), recording what it wrote."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.written: list[int] = []

    async def __call__(self, items: Sequence[int]) -> list[int]:
        await self.release.wait()
        self.written.extend(items)
        return list(items)


async def _submit_with_outcome(batcher: Batcher[int, int], item: int) -> RequestOutcome:
    outcome = RequestOutcome()
    current_outcome().set(outcome)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await batcher.submit(item)
    return outcome


async def test_an_order_whose_caller_gave_up_while_it_waited_is_never_written() -> None:
    store = SlowStore()
    batcher: Batcher[int, int] = Batcher(store, writers=1, commits=True)
    first = asyncio.create_task(batcher.submit(1))  # the writer is busy with this one
    await asyncio.sleep(0.01)

    waiting = await _submit_with_outcome(batcher, 2)  # still queued when it gives up

    store.release.set()
    assert await first == 1
    await asyncio.sleep(0.01)
    assert store.written == [1]  # the caller that left cost nothing
    assert not waiting.commit_started  # so its answer may say: nothing changed


async def test_an_order_whose_caller_gave_up_during_its_write_may_have_landed() -> None:
    store = SlowStore()
    batcher: Batcher[int, int] = Batcher(store, writers=1, commits=True)

    taken = await _submit_with_outcome(batcher, 7)  # taken by the writer, then given up

    store.release.set()
    await asyncio.sleep(0.01)
    assert store.written == [7]  # its write went on
    assert taken.commit_started  # so its answer says: outcome unknown


async def test_a_read_batcher_never_marks_a_commit() -> None:
    store = SlowStore()
    batcher: Batcher[int, int] = Batcher(store, writers=1)  # coalesced reads

    outcome = await _submit_with_outcome(batcher, 3)

    store.release.set()
    assert not outcome.commit_started


# -- a client that goes away ---------------------------------------------------------------


async def test_an_order_whose_client_went_away_before_its_batch_is_never_written() -> None:
    store = SlowStore()
    batcher: Batcher[int, int] = Batcher(store, writers=1, commits=True)
    busy = asyncio.create_task(batcher.submit(1))  # the writer is busy with another order
    await asyncio.sleep(0.01)

    async def place_order(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the body
        placed = await batcher.submit(2)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": str(placed).encode()})

    counts = LimitCounts()
    middleware = RequestDeadline(place_order, seconds=5, style="seed", counts=counts)
    left = asyncio.Event()
    sent: list[Message] = []

    body = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> Message:
        if body:
            return body.pop()
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/orders", "headers": []}
    request = asyncio.create_task(middleware(scope, receive, send))
    await asyncio.sleep(0.01)
    left.set()  # the client hangs up while its order waits for the next batch
    await asyncio.wait_for(request, 1)
    store.release.set()
    assert await busy == 1
    await asyncio.sleep(0.01)

    assert store.written == [1]  # the order of the client that left was dropped
    assert sent == []  # nobody to answer
    assert counts.client_gone == 1


async def test_a_client_that_stays_gets_its_answer_and_nothing_is_cut() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0.02)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    counts = LimitCounts()
    middleware = RequestDeadline(app, seconds=5, style="seed", counts=counts)
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
    answered = asyncio.Event()
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await answered.wait()  # as a server does: a disconnect only once the answer went
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            answered.set()

    scope = {"type": "http", "method": "POST", "path": "/orders", "headers": []}
    await middleware(scope, receive, send)

    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert counts.client_gone == 0

"""The order-status streams on the fakes: the process's one reader (orders/status_events.py)
passes ids in order and waits for a missing one, streams resume after an event id from
memory or from the table, filter by order and customer, beat when idle and end when the
hub closes; the routes refuse what they must before streaming (orders/events_stream.py),
and the request deadline and the in-flight limit let streams through (web/streams.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from orderstack.orders.events_stream import event_frame, order_events_router, stream_events
from orderstack.orders.service import OrderService
from orderstack.orders.status_events import StatusEvent, StatusEventHub
from orderstack.web.deadline import RequestDeadline
from orderstack.web.limits import InFlightLimit
from orderstack.web.streams import is_event_stream
from tests.unit.fakes import FakeCatalog, FakeOrderDatabase, FakeStatusEventLog
from tests.unit.routes import open_access, route_client


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _hub(log: FakeStatusEventLog, **kwargs: object) -> StatusEventHub:
    return StatusEventHub(log, poll=3600, **kwargs)  # type: ignore[arg-type]


def _ids(frames: bytes) -> list[int]:
    return [int(line[4:]) for line in frames.split(b"\n") if line.startswith(b"id: ")]


async def _next(stream: AsyncIterator[bytes], seconds: float = 1.0) -> bytes:
    return await asyncio.wait_for(anext(stream), seconds)


async def test_the_reader_passes_ids_in_order_and_waits_for_a_missing_one() -> None:
    log, ticks = FakeStatusEventLog(), Ticks()
    hub = _hub(log, gap=5.0, clock=ticks)
    await hub.open()  # starts at the highest id written: 0
    first, second, third = log.take(1, "pending"), log.take(2, "pending"), log.take(3, "pending")
    log.commit(first, third)  # the second's transaction is still open
    await hub.read_once()
    assert hub.horizon == first.id
    events, cursor = await hub.read(0)
    assert [e.id for e in events] == [first.id] and cursor == first.id
    ticks.now = 4.9
    await hub.read_once()
    assert hub.horizon == first.id  # still waiting: third would pass second's id
    log.commit(second)
    await hub.read_once()
    assert hub.horizon == third.id and hub.passed == 0
    events, _ = await hub.read(first.id)
    assert [e.id for e in events] == [second.id, third.id]
    await hub.close()


async def test_an_id_never_committed_is_passed_after_the_gap() -> None:
    log, ticks = FakeStatusEventLog(), Ticks()
    hub = _hub(log, gap=5.0, clock=ticks)
    await hub.open()
    lost = log.take(1, "pending")  # rolled back: never committed
    kept = log.add(2, "pending")
    await hub.read_once()
    assert hub.horizon == 0
    ticks.now = 5.0
    await hub.read_once()
    assert hub.horizon == kept.id and hub.passed == 1 and lost.id < kept.id
    assert hub.id_counts == {"read": 1, "passed": 1}  # on /metrics
    await hub.close()


async def test_a_stream_resumes_after_an_id_from_memory_or_from_the_table() -> None:
    log = FakeStatusEventLog()
    early = [log.add(i, "pending", "alice") for i in range(1, 6)]
    hub = _hub(log, memory=4)
    await hub.open()  # horizon 5: those are behind the reader, in the table only
    later = [log.add(i, "confirmed", "alice") for i in range(1, 7)]
    await hub.read_once()
    # From memory (the reader read them), nothing missed, nothing twice.
    events, cursor = await hub.read(later[1].id)
    assert [e.id for e in events] == [e.id for e in later[2:]] and cursor == later[-1].id
    assert log.catch_ups == 0
    # Older than memory: from the table, in pages.
    events, cursor = await hub.read(early[1].id, limit=2)
    assert [e.id for e in events] == [early[2].id, early[3].id] and cursor == early[3].id
    assert log.catch_ups == 1
    await hub.close()


async def test_streams_see_their_order_or_customer_alone() -> None:
    log = FakeStatusEventLog()
    hub = _hub(log)
    await hub.open()
    mine = log.add(1, "pending", "alice")
    log.add(2, "pending", "bob")
    theirs_too = log.add(1, "confirmed", "alice")
    await hub.read_once()
    by_order, _ = await hub.read(0, order_id=1)
    by_customer, _ = await hub.read(0, customer_id="bob")
    assert [e.id for e in by_order] == [mine.id, theirs_too.id]
    assert [e.customer_id for e in by_customer] == ["bob"]
    await hub.close()


async def test_a_stream_sends_events_beats_when_idle_and_ends_when_the_hub_closes() -> None:
    log = FakeStatusEventLog()
    placed = log.add(7, "pending", "alice")
    hub = _hub(log)
    stream = stream_events(hub, 0, heartbeat=0.05, order_id=7)
    assert await _next(stream) == b"retry: 1000\n\n"
    assert hub.streams == 1
    first = await _next(stream)
    assert _ids(first) == [placed.id]
    assert first == event_frame(placed)
    assert b'"status":"pending"' in first and b"event: status" in first
    assert await _next(stream) == b": keep-alive\n\n"
    confirmed = log.add(7, "confirmed", "alice")
    log.add(8, "pending", "bob")
    await hub.read_once()
    assert _ids(await _next(stream)) == [confirmed.id]
    await hub.close()
    with pytest.raises(StopAsyncIteration):
        await _next(stream)
    assert hub.streams == 0


async def test_a_stream_of_every_order_starts_at_the_next_change() -> None:
    log = FakeStatusEventLog()
    log.add(1, "pending")
    hub = _hub(log)
    stream = stream_events(hub, None, heartbeat=5)
    await _next(stream)
    reading = asyncio.ensure_future(_next(stream))
    await asyncio.sleep(0)
    later = log.add(2, "pending")
    await hub.read_once()
    assert _ids(await reading) == [later.id]
    await hub.close()


async def test_a_stream_cancelled_by_its_client_leaving_is_counted_out() -> None:
    hub = _hub(FakeStatusEventLog())
    stream = stream_events(hub, None, heartbeat=5)
    await _next(stream)
    waiting = asyncio.ensure_future(_next(stream))
    await asyncio.sleep(0.01)
    assert hub.streams == 1
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await stream.aclose()
    assert hub.streams == 0
    await hub.close()


async def test_the_hub_holds_at_most_its_streams_and_none_once_closed() -> None:
    hub = _hub(FakeStatusEventLog(), max_streams=1)
    assert hub.has_room()
    await hub.open()
    assert not hub.has_room()
    hub.release()
    await hub.close()
    assert not hub.has_room()
    assert hub.stream_counts == {"opened": 1, "refused": 2}  # on /metrics


async def test_the_routes_refuse_before_streaming() -> None:
    database = FakeOrderDatabase()
    service = OrderService(database.unit_of_work, FakeCatalog({1}))
    full = _hub(FakeStatusEventLog(), max_streams=0)
    router = order_events_router(open_access(), heartbeat=5)
    async with route_client(router, "seed", orders=service, order_events=full) as client:
        assert (await client.get("/orders/9/events")).status_code == 404
        bad = await client.get("/orders/events", headers={"Last-Event-ID": "x1"})
        assert bad.status_code == 400
        for bad_id in ("-1", "1.5", "0x1", "9" * 20):
            refused = await client.get("/orders/events", headers={"Last-Event-ID": bad_id})
            assert refused.status_code == 400, bad_id
        # An empty one is none (then the query's, or the next change): here, full: 503.
        empty = await client.get("/orders/events", headers={"Last-Event-ID": " "})
        assert empty.status_code == 503
        assert (await client.get("/orders/events?last_event_id=-1")).status_code == 400
        refused = await client.get("/orders/events")
        assert refused.status_code == 503 and refused.json()["code"] == "OVERLOADED"


@pytest.mark.parametrize(
    ("method", "path", "stream"),
    [
        ("GET", "/orders/events", True),
        ("GET", "/orders/12/events", True),
        ("POST", "/orders/events", False),
        ("GET", "/orders/12", False),
        ("GET", "/orders/eventsx", False),
    ],
)
def test_which_requests_are_streams(method: str, path: str, stream: bool) -> None:
    assert is_event_stream({"type": "http", "method": method, "path": path}) is stream


async def _slow_answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.2)
    await send({"type": "http.response.body", "body": b"done"})


def _request(path: str) -> tuple[Scope, Receive, Send, list[Message]]:
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    return scope, receive, send, sent


async def test_the_request_deadline_lets_a_stream_outlast_it() -> None:
    deadline = RequestDeadline(_slow_answer, seconds=0.05, style="seed")
    scope, receive, send, sent = _request("/orders/events")
    await deadline(scope, receive, send)
    assert sent[-1].get("body") == b"done"
    scope, receive, send, sent = _request("/orders/1")
    await deadline(scope, receive, send)
    assert sent[-1].get("body") != b"done"  # cut mid-answer


async def test_a_stream_takes_no_in_flight_slot() -> None:
    limit = InFlightLimit(_slow_answer, max_in_flight=1, style="seed")
    streams = [_request("/orders/events") for _ in range(3)]
    plain = _request("/orders/1")
    await asyncio.gather(*(limit(s, r, w) for s, r, w, _ in [*streams, plain]))
    assert all(sent[0]["status"] == 200 for *_, sent in [*streams, plain])


# -- any interleaving of transactions -------------------------------------------------------

# A step: begin a transaction that takes an id (for order n), commit or roll back the oldest
# open one, let the reader read, or let time pass (the gap's 5 s).
_STEPS = st.lists(
    st.sampled_from(["take", "commit", "commit_newest", "rollback", "read", "wait"]),
    min_size=1,
    max_size=40,
)


@settings(max_examples=int(os.environ.get("STREAM_EXAMPLES", "60")), deadline=None)
@given(steps=_STEPS, resume_at=st.integers(min_value=0, max_value=40))
def test_any_interleaving_is_streamed_in_order_once_and_resumed_without_a_miss(
    steps: list[str], resume_at: int
) -> None:
    """Transactions take ids and commit in any order (or roll back); the stream delivers
    ids in increasing order, none twice; each id committed within the gap is delivered; and
    a client resuming after any id it received gets exactly the delivered ids above it."""

    async def run() -> None:
        log, ticks = FakeStatusEventLog(), Ticks()
        hub = _hub(log, gap=5.0, clock=ticks)
        await hub.open()
        open_: list[StatusEvent] = []
        committed_in_time: set[int] = set()
        taken_at: dict[int, float] = {}
        delivered: list[int] = []
        cursor = 0
        for step in [*steps, "commit", "commit", "read", "wait", "read", "wait", "read"]:
            if step == "take":
                event = log.take(len(taken_at) + 1, "pending")
                taken_at[event.id] = ticks.now
                open_.append(event)
            elif step in ("commit", "commit_newest", "rollback") and open_:
                event = open_.pop(0 if step != "commit_newest" else -1)
                if step != "rollback":
                    log.commit(event)
                    if ticks.now - taken_at[event.id] < 5.0:
                        committed_in_time.add(event.id)
            elif step == "wait":
                ticks.now += 5.0
            elif step == "read":
                await hub.read_once()
                events, cursor = await hub.read(cursor)
                delivered += [e.id for e in events]
        assert delivered == sorted(set(delivered))  # in order, none twice
        assert committed_in_time <= set(delivered)  # none committed in time is missed
        for after in delivered[resume_at:] or delivered[-1:]:
            # Another replica resuming after ``after`` reads every delivered id above it.
            rows = await log.after(after, limit=10_000, upto=hub.horizon)
            assert {e.id for e in rows} >= {i for i in delivered if i > after}
        await hub.close()

    asyncio.run(run())


async def test_a_stream_whose_history_cannot_be_read_ends_cleanly() -> None:
    class Unreadable(FakeStatusEventLog):
        async def after(self, after: int, **kwargs: object) -> list[StatusEvent]:  # type: ignore[override]
            if kwargs.get("upto") is not None:
                raise ConnectionError("database away")
            return await super().after(after, **kwargs)  # type: ignore[arg-type]

    log = Unreadable()
    log.add(1, "pending")
    hub = _hub(log, memory=1)
    stream = stream_events(hub, 0, heartbeat=5, order_id=1)  # from before the hub's memory
    assert await _next(stream) == b"retry: 1000\n\n"
    with pytest.raises(StopAsyncIteration):
        await _next(stream)
    assert hub.streams == 0
    await hub.close()

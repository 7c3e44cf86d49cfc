"""Orders' status changes pushed as Server-Sent Events: ``GET /orders/{order_id}/events``
(one order) and ``GET /orders/events`` (a customer's own orders; staff and admins, and
everyone with auth off, every order).

Each change is one event: ``id:`` its event id (``order_status_events.id``), ``event:
status``, ``data:`` ``{"id": <order id>, "status": …, "at": …, "customer_id": …}``. A
client resumes after the last event it saw with ``Last-Event-ID`` (header, as EventSource
sends it) or ``?last_event_id=``: read from the table, not from a replica's memory, so any
replica resumes any stream. Without one, an order's stream starts with its whole history
(its current status comes first), and ``/orders/events`` with the next change.

Changes are read by one shared reader per process, which polls the table every
``ORDER_EVENTS_POLL_SECONDS`` while any stream is open and fans out to the streams
(orders/status_events.py). A comment line (``: keep-alive``) every
``ORDER_EVENTS_HEARTBEAT_SECONDS`` on an idle stream keeps proxies from closing it and finds
a client gone.

A stream lasts: it is outside the request deadline and the in-flight limit
(web/streams.py), bounded instead by ``ORDER_EVENT_STREAMS_MAX`` streams per process (past
it: 503 ``OVERLOADED``), and it ends, cleanly, as soon as the server is told to stop
(``stop_requested``), so it never holds up the drain of a SIGTERM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from orderstack import wire
from orderstack.orders.domain import OrderNotFound
from orderstack.orders.service import OrderService
from orderstack.orders.status_events import StatusEvent, StatusEventHub, TooManyStreams
from orderstack.serving import stop_requested
from orderstack.web.auth import Access, caller_of, depends_on
from orderstack.web.errors import ServiceError
from orderstack.web.inputs import MAX_ID, Digits, EntityId

log = structlog.get_logger(__name__)

HUB_STATE = "order_events"  # app.state's name of the process's StatusEventHub
EVENT_STREAM = "text/event-stream"
_RETRY = b"retry: 1000\n\n"  # EventSource reconnects after 1 s (its default is 3)
_KEEP_ALIVE = b": keep-alive\n\n"

_LastEventId = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_ID,
        description="resume after this event id (as the Last-Event-ID header; the header"
        " wins when both are sent); 0: from the first event",
    ),
    Digits,
]
_LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=20,
        description="the id of the last event seen: the stream resumes after it",
    ),
]
_STREAM_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events, one per status change (id, event: status, data:"
        " JSON {id, status, at, customer_id}), and a comment line every 15 s",
        "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
    },
    400: {"description": "BAD_REQUEST: Last-Event-ID is not an event id"},
    401: {"description": "UNAUTHORIZED: no valid bearer token"},
    403: {"description": "FORBIDDEN: the token's role may not"},
    503: {"description": "OVERLOADED: this process holds its most streams; retry"},
}


def event_frame(event: StatusEvent) -> bytes:
    data: dict[str, Any] = {
        "id": event.order_id,
        "status": event.status,
        "at": wire.timestamp(event.at),
    }
    if event.customer_id is not None:
        data["customer_id"] = event.customer_id
    return b"id: %d\nevent: status\ndata: %s\n\n" % (event.id, orjson.dumps(data))


def _resume_after(header: str | None, query: int | None) -> int | None:
    value = (header or "").strip()
    if not value:  # absent, or empty (an event without an id resets EventSource's to "")
        return query
    if not value.isascii() or not value.isdigit() or int(value) > MAX_ID:
        raise ServiceError(400, "BAD_REQUEST", "Last-Event-ID must be an event id (digits)")
    return int(value)


def _hub(request: Request) -> StatusEventHub:
    hub: StatusEventHub = getattr(request.app.state, HUB_STATE)
    return hub


def _room(request: Request) -> StatusEventHub:
    """The hub, once it is known to have room for one more stream (else 503)."""
    hub = _hub(request)
    hub.close_on(stop_requested(request.app))
    if not hub.has_room():
        raise ServiceError(
            503, "OVERLOADED", "too many event streams open on this server; retry later"
        )
    return hub


async def stream_events(
    hub: StatusEventHub,
    after: int | None,
    *,
    heartbeat: float,
    order_id: int | None = None,
    customer_id: str | None = None,
) -> AsyncIterator[bytes]:
    """The stream's bytes: the events above ``after`` (None: the hub's horizon, the next
    change) as the hub reads them, a comment after ``heartbeat`` idle seconds; it ends when
    the hub closes, or at once (cleanly: the client resumes after its last id, here or on
    another replica) when the table cannot be read. Counted in the hub from its first byte,
    and out however it ends (the client gone: cancelled here); a hub full by then (a race)
    ends it at once."""
    try:
        horizon = await hub.open()
    except TooManyStreams:
        return
    cursor = horizon if after is None else after
    try:
        yield _RETRY
        while not hub.closed:
            moved = hub.moved()
            try:
                events, cursor = await hub.read(cursor, order_id=order_id, customer_id=customer_id)
            except Exception as exc:  # the table unreadable: end it; the client resumes
                log.warning("order status stream ended: history unreadable", error=str(exc))
                return
            if events:
                yield b"".join(event_frame(e) for e in events)
                continue
            if hub.horizon is not None and hub.horizon > cursor:
                continue  # a page of a long catch-up, read further at once
            try:
                async with asyncio.timeout(heartbeat):
                    await moved.wait()
            except TimeoutError:
                yield _KEEP_ALIVE
    finally:
        hub.release()


def _stream_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type=EVENT_STREAM,
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


def order_events_router(access: Access, *, heartbeat: float) -> APIRouter:
    """The two streams, behind the customer guard as the other order routes: a customer
    streams its own orders (another's order is 404), staff and admins every order.
    Included before ``order_router``: ``/orders/events`` is not an order id."""
    router = APIRouter(
        prefix="/orders",
        tags=["orders"],
        dependencies=depends_on(access.customer),
    )

    @router.get("/events", response_class=StreamingResponse, responses=_STREAM_ANSWER)
    async def events(
        request: Request,
        last_event_id: _LastEventId = None,
        last_event_id_header: _LastEventIdHeader = None,
    ) -> StreamingResponse:
        """Status changes of the caller's orders (every order for staff and admins), as
        Server-Sent Events; from the next change, or after ``Last-Event-ID``."""
        after = _resume_after(last_event_id_header, last_event_id)
        hub = _room(request)
        owner = caller_of(request.scope).owner
        return _stream_response(stream_events(hub, after, heartbeat=heartbeat, customer_id=owner))

    @router.get(
        "/{order_id}/events",
        response_class=StreamingResponse,
        responses={**_STREAM_ANSWER, 404: {"description": "ORDER_NOT_FOUND"}},
    )
    async def get_events(
        order_id: EntityId,
        request: Request,
        last_event_id: _LastEventId = None,
        last_event_id_header: _LastEventIdHeader = None,
    ) -> StreamingResponse:
        """The order's status changes as Server-Sent Events: its whole history first
        (its current status last), then each change; after ``Last-Event-ID`` when sent."""
        after = _resume_after(last_event_id_header, last_event_id)
        service: OrderService = request.app.state.orders
        try:
            await service.get_order(order_id, owner=caller_of(request.scope).owner)
        except OrderNotFound:
            raise ServiceError(404, "ORDER_NOT_FOUND", "order not found") from None
        hub = _room(request)
        return _stream_response(
            stream_events(
                hub, 0 if after is None else after, heartbeat=heartbeat, order_id=order_id
            )
        )

    return router


__all__ = ["HUB_STATE", "event_frame", "order_events_router", "stream_events"]

"""Long-lived answers: the event streams (``GET …/events``, Server-Sent Events).

A stream is open for as long as its client listens, so the bounds made for requests do not
fit it: the request deadline (web/deadline.py) would cut it after REQUEST_TIMEOUT_SECONDS,
and an in-flight slot (web/limits.py) held for minutes would both starve the other requests
and teach the adaptive limit that the service has become slow. Both pass these requests
through; the route bounds them itself (orders/events_stream.py: ``ORDER_EVENT_STREAMS_MAX``
per process, and each stream ends when the server is told to stop)."""

from __future__ import annotations

from starlette.types import Scope

STREAM_SUFFIX = "/events"


def is_event_stream(scope: Scope) -> bool:
    """A GET of a path ending in ``/events`` (``/orders/events``, ``/orders/7/events``)."""
    return scope.get("method") == "GET" and str(scope.get("path", "")).endswith(STREAM_SUFFIX)


__all__ = ["STREAM_SUFFIX", "is_event_stream"]

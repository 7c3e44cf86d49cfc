"""Whether a request cut short may have changed something: the answer a deadline gives.

A request cut by its deadline (web/deadline.py) before any of its writes reached COMMIT
changed nothing, and says so (``REQUEST_TIMEOUT``: safe to retry as it is). One cut while a
COMMIT of its writes was on its way, or after, may have taken effect: the answer says the
outcome is unknown (``COMMIT_OUTCOME_UNKNOWN``), and a client that retries with the same
``Idempotency-Key`` gets the one order, never two.

The deadline opens a ``RequestOutcome`` for each request; whatever commits for that request
(a unit of work, the order intake's group commit) calls ``commit_started()`` first, from
the request's own task, where the context variable is seen.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["RequestOutcome", "commit_started", "current_outcome"]


class RequestOutcome:
    """One request's record: did a commit of its writes start?"""

    __slots__ = ("commit_started",)

    def __init__(self) -> None:
        self.commit_started = False


_current: ContextVar[RequestOutcome | None] = ContextVar("request_outcome", default=None)


def current_outcome() -> ContextVar[RequestOutcome | None]:
    """The context variable the deadline sets (and resets) around each request."""
    return _current


def commit_started() -> None:
    """Note that a COMMIT carrying this request's writes is under way (no-op outside a
    request, as in the consumers and the relay)."""
    outcome = _current.get()
    if outcome is not None:
        outcome.commit_started = True

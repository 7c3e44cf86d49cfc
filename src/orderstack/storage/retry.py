"""One more try for a transaction whose pooled connection turned out to be dead.

The pool does not ping a connection before lending it (storage/engine.py: a round trip per
transaction). A connection the server dropped while it sat in the pool (a restart, KILL,
``pg_terminate_backend``, an idle timeout) fails on its first statement, and SQLAlchemy then
discards every pooled connection of that age. Reads, and writes that had not reached their
COMMIT, lose nothing by running again: the use cases wrap such a transaction in
``retry_on_broken_connection`` so that the client gets its answer instead of a 503.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from orderstack.storage.errors import is_broken_connection

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def retry_on_broken_connection(transaction: Callable[[], Awaitable[T]]) -> T:
    """Run ``transaction`` (a whole one: from taking a connection to its COMMIT, if any);
    if it fails because its connection broke before COMMIT, run it once more, on a fresh
    connection. Only for work that may run twice when nothing of the first run was kept:
    reads, and writes whose COMMIT was not sent (a break during COMMIT raises
    CommitOutcomeUnknown, which is not retried). Raises what the last run raised."""
    try:
        return await transaction()
    except Exception as exc:
        if not is_broken_connection(exc):
            raise
        log.info("connection found broken; the transaction runs again", error=repr(exc))
    return await transaction()

"""Structured logs (structlog) to stderr, JSON by default.

One id follows each request through both services: the ``X-Request-ID`` of the request
(web/request_id.py binds it), then the outbox row its events are written to, the AMQP
header ``x-request-id``, and the consumer on the other side, which binds it again while
it handles the message. Bound with structlog's contextvars under ``request_id``, it is in
every log line written meanwhile.
"""

from __future__ import annotations

import logging
import random
import sys

import orjson
import structlog

REQUEST_ID_KEY = "request_id"
# What an incoming X-Request-ID may be: printable ASCII, no spaces, at most this long (it
# goes into every log line and the outbox's request_id column, String(128)). Anything
# else is replaced by a fresh id.
MAX_REQUEST_ID_CHARS = 128


def valid_request_id(value: str | None) -> str | None:
    """``value`` when it is usable as a request id, else None."""
    if not value or len(value) > MAX_REQUEST_ID_CHARS:
        return None
    if not all("!" <= ch <= "~" for ch in value):  # printable ASCII, no space
        return None
    return value


_VERSION_4 = (0x4 << 76) | (0x8 << 60)  # a version 4, RFC 4122 variant UUID's fixed bits
_FREE_BITS = ~((0xF << 76) | (0xC << 60)) & ((1 << 128) - 1)


def new_request_id() -> str:
    """A random UUID (version 4) as text. From ``random``, not ``os.urandom``: a request
    id names a request, it guards nothing, and the system call was a few per cent of a
    cached GET."""
    value = f"{(random.getrandbits(128) & _FREE_BITS) | _VERSION_4:032x}"
    return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


def current_request_id() -> str | None:
    """The request id bound to the logs of the running task (None outside a request)."""
    value = structlog.contextvars.get_contextvars().get(REQUEST_ID_KEY)
    return value if isinstance(value, str) else None


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    # JSON lines rendered by orjson and written as bytes: a line per order is logged on
    # the hot path, and the standard library's encoder made it a few per cent of an
    # order's CPU.
    renderer: structlog.types.Processor
    factory: structlog.types.WrappedLogger
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("aio_pika", "aiormq", "httpx", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""Serving the apps with uvicorn: one service per process, or both in one process.

Stopping (SIGTERM, or Ctrl-C): uvicorn closes the listening sockets at once (new
connections are refused), closes idle keep-alive connections, and lets the requests in
flight be answered for up to ``grace`` seconds (``SHUTDOWN_GRACE_SECONDS``); then the
lifespan stops the service's work (assembly.py, messaging/runtime.py) and closes its
pools. The process then exits 0. With ``stop_bound``, a watchdog ends the process with
exit code 1 if all that has not finished that many seconds after the signal.

Starting: the listening sockets are bound first, before anything else starts (migrations,
the broker connection): an address in use or not of this host raises ``CannotListen`` at
once, with nothing to undo. A stop signal during start-up (the migrations waiting for an
unreachable database, say) is a stop like any other: the app's lifespan gives up its
start-up at once (``unless_stopped``), nothing is served, and the process exits 0.

The edge (``EdgeProtocol``, uvicorn's httptools protocol with bounds of its own, set per app
by ``set_edge_limits``): what a connection may cost before any of the app runs. A request's
head (request line and headers) larger than ``max_header_bytes`` is 431; a head that has
not fully arrived ``header_timeout`` seconds after the connection opened (or after its first
byte, on a kept-alive connection), or a body ``body_timeout`` seconds after its head, is
408; each then closes the connection. Past ``max_connections`` open connections on one
server, a new connection's request is 503 and the connection closed. An idle kept-alive
connection is closed after ``keep_alive`` seconds, and one that served
``max_requests_per_connection`` requests says ``Connection: close`` in its last answer.
Without these, a few sockets sending a head slowly (or one huge header) held memory, a
connection and, before the body-first rule of web/limits.py, an in-flight slot forever.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import httptools
import orjson
import structlog
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orderstack.periodic import cancel_and_wait

log = structlog.get_logger(__name__)

GC_YOUNG_THRESHOLD = 20_000  # CPython's default is 700 (2,000 from 3.12 on)
DEFAULT_GRACE_SECONDS = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long an idle keep-alive connection stays open: longer than clients and balancers keep
# theirs (httpx 5 s, aiohttp 15 s, HAProxy's idle server connections), so that they close
# first. A server closing at the same moment as a client reuses the connection makes the
# client's request fail unsent (uvicorn's default is 5 s, httpx's expiry 5 s: a race).
KEEP_ALIVE_SECONDS = 75
FORCED_EXIT_CODE = 1
# After an answer that ends a connection early (408, 431, 503 at the cap), what the client
# still sends is read and dropped for up to this long before the socket is closed: closing
# with unread bytes makes the kernel send a reset, and a reset can reach the client before
# it has read the answer (a "lingering close", as nginx does it).
LINGER_SECONDS = 2.0


class CannotListen(Exception):
    """The server's address cannot be listened on (in use, not an address of this host, a
    name that does not resolve); the message says which address and why."""


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to ``host:port`` (not listening yet: connections are refused until the
    server starts), one per address the host resolves to, as asyncio's ``create_server``
    binds them. Raises CannotListen."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:  # not a name or an address this host can resolve
        raise CannotListen(f"cannot listen on {where}: {exc.strerror or exc}") from None
    except UnicodeError:  # a name no resolver could take (an empty label, say)
        raise CannotListen(f"cannot listen on {where}: not a host name") from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise CannotListen(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return bound


_STOP_REQUESTED = "stop_requested"


def stop_requested(app: FastAPI) -> asyncio.Event:
    """The event set when a stop signal (SIGTERM, Ctrl-C) reaches the server of ``app``;
    the same event on every call."""
    event: asyncio.Event | None = getattr(app.state, _STOP_REQUESTED, None)
    if event is None:
        event = asyncio.Event()
        setattr(app.state, _STOP_REQUESTED, event)
    return event


async def unless_stopped(app: FastAPI, work: Coroutine[Any, Any, object]) -> bool:
    """Run ``work`` (a step of ``app``'s start-up) unless a stop signal reaches the server
    of ``app`` first: then ``work`` is cancelled, waited for, and False returned. True when
    ``work`` finished; raises what it raises."""
    stop = stop_requested(app)
    if stop.is_set():
        work.close()
        return False
    doing = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({doing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if doing in done:
            doing.result()  # raises what work raised
            return True
        return False
    finally:
        stopping.cancel()
        # A cancel can be lost inside the work (orderstack.periodic says how): repeated
        # until the work has ended.
        await cancel_and_wait(doing)


def _plain_refusal(status: int, code: str, message: str) -> bytes:
    return orjson.dumps({"statusCode": status, "code": code, "message": message})


def _uncounted(reason: str) -> None:
    return None


# Why the edge refused a request or a connection: what ``EdgeLimits.refused`` is told.
EDGE_REFUSALS = ("head_too_large", "head_timeout", "body_timeout", "connections")


@dataclass(frozen=True)
class EdgeLimits:
    """What one server enforces on its connections before the app sees a request (see the
    module docstring); the settings of the same names set them (web/limits.py
    ``edge_limits``). ``refusal(status, code, message)`` is the JSON body of the edge's own
    answers, in the app's error style; ``refused(reason)`` is told of each (one of
    ``EDGE_REFUSALS``), for the app's metrics."""

    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = KEEP_ALIVE_SECONDS
    max_connections: int = 4096
    max_requests_per_connection: int = 0  # 0: no bound
    refusal: Callable[[int, str, str], bytes] = _plain_refusal
    refused: Callable[[str], None] = _uncounted


_EDGE_LIMITS = "edge_limits"


def set_edge_limits(app: FastAPI, limits: EdgeLimits) -> None:
    """The limits the server of ``app`` enforces (defaults otherwise: ``EdgeLimits()``)."""
    setattr(app.state, _EDGE_LIMITS, limits)


def edge_limits(app: FastAPI) -> EdgeLimits:
    limits = getattr(app.state, _EDGE_LIMITS, None)
    return limits if isinstance(limits, EdgeLimits) else EdgeLimits()


# What a connection is waiting for, each with its own deadline: the head of a request, its
# body; none (None) while the app answers or the connection is idle between requests
# (uvicorn's keep-alive timer bounds that).
_HEAD, _BODY = "head", "body"


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the edge has answered."""


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (kept for its speed) with the edge's bounds. httptools
    has no limit of its own on a head's size and buffers a header field until it ends: the
    bytes of a head are counted as they are fed (``data_received``), and exactly once it is
    parsed (``on_headers_complete``), so a head costs at most the limit and one read (256
    KiB). One timer per connection serves both deadlines: a phase change only moves the due
    time, and the timer, firing early, sets itself again for it. ``limits`` is set on a
    subclass per server (``protocol_for``)."""

    limits: ClassVar[EdgeLimits] = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: str | None = _HEAD
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # Of the head being read: the bytes of the chunks it alone filled (what a refusal
        # goes by), and at most how many bytes it had before the chunk being fed (it may have
        # begun in the middle of the one before).
        self._head_bytes = self._head_bound = 0
        self._chunk = 0  # the size of the chunk being fed
        self._heads = 0  # heads parsed on this connection
        self._over_cap = False
        self._refused = False

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._over_cap = len(self.connections) > self.limits.max_connections
        self._expect(_HEAD, self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._refused:  # answered already: nothing to drain
            self.transport.close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: what still arrives is dropped
        self._unset_keepalive_if_required()
        heads, in_head = self._heads, self._phase is _HEAD or self._phase is None
        self._chunk = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._refused:
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        # A chunk that began and ended inside one head is all head: counted here, before
        # the head has ended (a chunk that ended a head is counted by on_headers_complete).
        if self._phase is _HEAD:
            if in_head and self._heads == heads:
                self._head_bytes += len(data)
                self._head_bound += len(data)
                if self._head_bytes > self.limits.max_header_bytes:
                    self._refuse_large_head()
            else:  # the head began within this chunk, after another request's bytes
                self._head_bound = len(data)

    # -- the parser's callbacks -------------------------------------------------------------

    # The callbacks run for every request: the parent's methods are called directly (no
    # super() object) and the deadlines set inline (a cached GET is benchmarked).

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._head_bytes = self._head_bound = 0
        if self._phase is not _HEAD:  # a connection's first head runs from its opening
            self._phase = _HEAD
            self._due = self.loop.time() + self.limits.header_timeout
            if self._timer is None:
                self._timer = self.loop.call_at(self._due, self._deadline)

    def on_headers_complete(self) -> None:
        self._heads += 1
        limit = self.limits.max_header_bytes
        # Counted exactly only when the chunks of this head could hold more than the limit
        # (a head is rarely more than a few hundred bytes: the sum is skipped).
        if self._head_bound + self._chunk > limit and (
            len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > limit
        ):
            self._refuse_large_head()
            raise _Refused
        if self._over_cap:
            self._refuse(
                "connections",
                503,
                "OVERLOADED",
                "too many connections to this server; retry on a new one",
                b"retry-after: 1\r\n",
            )
            raise _Refused
        self._phase = _BODY
        self._due = self.loop.time() + self.limits.body_timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._due, self._deadline)
        HttpToolsProtocol.on_headers_complete(self)
        most = self.limits.max_requests_per_connection
        if most and self._heads >= most:
            self.cycle.keep_alive = False  # its answer says Connection: close

    def on_message_complete(self) -> None:
        # The app answers now (its own deadline, web/deadline.py), or already has.
        self._phase = None
        HttpToolsProtocol.on_message_complete(self)

    # -- deadlines and refusals -------------------------------------------------------------

    def _expect(self, phase: str, seconds: float) -> None:
        self._phase = phase
        self._due = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_at(self._due, self._deadline)

    def _deadline(self) -> None:
        self._timer = None
        if self._phase is None or self.transport.is_closing():
            return
        if self.loop.time() < self._due:  # the phase changed since the timer was set
            self._timer = self.loop.call_at(self._due, self._deadline)
            return
        if self._phase is _HEAD:
            reason = "head_timeout"
            what = f"the request headers did not arrive within {self.limits.header_timeout:g} s"
        else:
            reason = "body_timeout"
            what = f"the request body did not arrive within {self.limits.body_timeout:g} s"
        self._refuse(reason, 408, "REQUEST_TIMEOUT", what)

    def _refuse_large_head(self) -> None:
        self._refuse(
            "head_too_large",
            431,
            "HEADERS_TOO_LARGE",
            f"request line and headers larger than {self.limits.max_header_bytes} bytes",
        )

    def _refuse(
        self, reason: str, status: int, code: str, message: str, headers: bytes = b""
    ) -> None:
        """Answer ``status`` (unless an answer is being sent: then only close), drop what
        the client still sends, and close the connection (``LINGER_SECONDS`` at most)."""
        self._refused, self._phase = True, None
        self.limits.refused(reason)
        cycle: Any = self.cycle  # None before the connection's first request
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            # The app, if it runs, sees its client gone; whatever it answers goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self._unset_keepalive_if_required()
        transport = self.transport
        if answering or transport.is_closing():
            transport.close()
            return
        body = self.limits.refusal(status, code, message)
        transport.write(
            b"".join(
                (
                    _STATUS_LINES[status],
                    b"content-type: application/json\r\ncontent-length: ",
                    str(len(body)).encode(),
                    b"\r\nconnection: close\r\n",
                    headers,
                    b"\r\n",
                    body,
                )
            )
        )
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


_STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}


def protocol_for(limits: EdgeLimits) -> type[EdgeProtocol]:
    """The protocol class of one server: uvicorn builds one per connection from a class."""
    return type("EdgeProtocol", (EdgeProtocol,), {"limits": limits})


class _Server(uvicorn.Server):
    """uvicorn's server; a stop signal also reaches the other servers of its group (both
    services in one process), arms the watchdog and sets each app's ``stop_requested``."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self.group: list[_Server] = [self]
        self._on_signal = on_signal
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def _request_stop(self) -> None:
        # A signal handler runs between two bytecodes of whatever the loop was doing: the
        # event is set from the loop itself.
        app = self.config.app
        if self._loop is not None and isinstance(app, FastAPI):
            self._loop.call_soon_threadsafe(stop_requested(app).set)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        again = self.should_exit  # a second Ctrl-C forces the stop, on every server
        if not again:
            log.info("stop signal received", signal=signal.Signals(sig).name)
            self._on_signal()
        for server in self.group:
            server._request_stop()
            if server is not self:
                server.force_exit = server.force_exit or (again and sig == signal.SIGINT)
                server.should_exit = True
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Only the group's first server takes the signals (and passes them on). Each
        taking them would nest their handlers: the first to stop would raise the signal
        again under the other's, and a Ctrl-C raised again is a second one, which forces
        the other's stop and cuts the requests it is still answering."""
        if self.group[0] is not self:
            yield
            return
        with super().capture_signals():
            yield


class _Watchdog:
    """Ends the process ``bound`` seconds after the first stop signal if it is still there
    (a stop stuck on a dead server, say): exit code 1 tells it was not a clean stop."""

    def __init__(self, bound: float | None) -> None:
        self._bound = bound
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._bound is None or self._timer is not None:
            return
        self._timer = threading.Timer(self._bound, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        log.error("stop took longer than its bound, exiting", bound_seconds=self._bound)
        os._exit(FORCED_EXIT_CODE)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _server(
    app: FastAPI, host: str, port: int, grace: float, on_signal: Callable[[], None]
) -> _Server:
    limits = edge_limits(app)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol_for(limits),  # httptools, bounded (EdgeProtocol)
        access_log=False,
        proxy_headers=False,  # no proxy in front that we trust; and a middleware less
        server_header=False,
        # uvicorn's limit_concurrency is not used: it answers 503 on requests of any
        # connection once the open ones (idle ones too) reach it; EdgeProtocol refuses the
        # connections past the cap only, and closes them.
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]  # a float is kept
        log_config=None,
        lifespan="on",
        # Typed int by uvicorn, used as asyncio.wait_for's timeout: a fraction is kept
        # (rounding made SHUTDOWN_GRACE_SECONDS=1.4 one second, 0.4 a whole one).
        timeout_graceful_shutdown=grace,  # type: ignore[arg-type]
    )
    return _Server(config, on_signal)


@contextmanager
def _stop_signals_end_cleanly(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """uvicorn raises the stop signal again once it has shut down, under the handler that
    was there before it: with the default one a SIGTERM would then kill the process (exit
    -15, 143 in a shell) after a clean stop. Handled here by doing nothing, the process
    returns from ``serve`` and exits 0."""
    previous = {sig: signal.signal(sig, _ignore) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(sig: int, frame: FrameType | None) -> None:
    return None


def serve(
    app: FastAPI,
    host: str,
    port: int,
    *,
    grace: float = DEFAULT_GRACE_SECONDS,
    stop_bound: float | None = None,
) -> None:
    """Serve one app until SIGTERM or Ctrl-C; return once it has stopped cleanly. Raises
    CannotListen, before anything of the app has started, when ``host:port`` cannot be
    listened on."""
    sockets = _listen(host, port)
    _quieter_garbage_collection()
    watchdog = _Watchdog(stop_bound)
    with _stop_signals_end_cleanly(STOP_SIGNALS):
        _server(app, host, port, grace, watchdog.arm).run(sockets=sockets)
    watchdog.disarm()
    log.info("stopped")


def _quieter_garbage_collection() -> None:
    """The objects built at start-up (the app, its routes, SQLAlchemy's tables and compiled
    statements) live as long as the process: ``gc.freeze`` moves them out of the cyclic
    collector's way. A request allocates hundreds of short-lived objects, so a higher
    first-generation threshold makes young collections rarer (each one still cheap)."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, second, third)


async def serve_together(
    apps: list[tuple[FastAPI, int]],
    host: str,
    *,
    grace: float = DEFAULT_GRACE_SECONDS,
    stop_bound: float | None = None,
) -> None:
    """Run several apps on one event loop; a stop signal (SIGTERM or Ctrl-C) stops them
    all, each draining its requests in flight, and returns. Ctrl-C must not become a
    KeyboardInterrupt: uvicorn raises the signal again as soon as the first server has
    stopped, which would cut the requests the other one is still answering. Raises
    CannotListen, before any app has started, when one of the addresses cannot be
    listened on."""
    bound: list[list[socket.socket]] = []
    try:
        for _, port in apps:
            bound.append(_listen(host, port))
    except CannotListen:
        for sockets in bound:
            for sock in sockets:
                sock.close()
        raise
    _quieter_garbage_collection()
    watchdog = _Watchdog(stop_bound)
    servers = [_server(app, host, port, grace, watchdog.arm) for app, port in apps]
    for server in servers:
        server.group = servers
    with _stop_signals_end_cleanly(STOP_SIGNALS):
        await asyncio.gather(
            *(server.serve(sockets) for server, sockets in zip(servers, bound, strict=True))
        )
    watchdog.disarm()

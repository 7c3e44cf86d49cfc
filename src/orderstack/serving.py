"""Serving the apps with uvicorn: one service per process, or both in one process.

Stopping (SIGTERM, or Ctrl-C): uvicorn closes the listening sockets at once (new
connections are refused), closes idle keep-alive connections, and lets the requests in
flight be answered for up to ``grace`` seconds (``SHUTDOWN_GRACE_SECONDS``); then the
lifespan stops the service's work (assembly.py, messaging/runtime.py) and closes its
pools. The process then exits 0. With ``stop_bound``, a watchdog ends the process with
exit code 1 if all that has not finished that many seconds after the signal.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import structlog
import uvicorn
from fastapi import FastAPI

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


class _Server(uvicorn.Server):
    """uvicorn's server; a stop signal also reaches the other servers of its group (both
    services in one process) and arms the watchdog."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self.group: list[_Server] = [self]
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        again = self.should_exit  # a second Ctrl-C forces the stop, on every server
        if not again:
            log.info("stop signal received", signal=signal.Signals(sig).name)
            self._on_signal()
        for server in self.group:
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
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # no proxy in front that we trust; and a middleware less
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
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
    """Serve one app until SIGTERM or Ctrl-C; return once it has stopped cleanly."""
    _quieter_garbage_collection()
    watchdog = _Watchdog(stop_bound)
    with _stop_signals_end_cleanly(STOP_SIGNALS):
        _server(app, host, port, grace, watchdog.arm).run()
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
    stopped, which would cut the requests the other one is still answering."""
    _quieter_garbage_collection()
    watchdog = _Watchdog(stop_bound)
    servers = [_server(app, host, port, grace, watchdog.arm) for app, port in apps]
    for server in servers:
        server.group = servers
    with _stop_signals_end_cleanly(STOP_SIGNALS):
        await asyncio.gather(*(server.serve() for server in servers))
    watchdog.disarm()

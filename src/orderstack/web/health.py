"""/health and /readyz: every dependency probed at once, each bounded by a short timeout.

The result is kept for ``ttl`` (a second by default) and shared by the requests that arrive
meanwhile, with at most one probe round in flight: a flood of health checks (they are
exempt from load shedding, and unauthenticated) costs the dependencies one round a second.

``/health`` reports every dependency (200 only when all are up). ``/readyz`` answers for
what this replica needs to do its own work, its database and its broker: a load balancer
takes the replica out of rotation on a 503 and back once it is 200. A dependency the
replica rides out (``rides_out``: the broker, whose events wait in the outbox) counts
against readiness only until it has been up once: a replica that never reached its broker
is misconfigured or early and stays out, while one whose broker went away later keeps
taking orders (all of them would otherwise leave rotation together in a broker outage).
``/livez`` (web/app.py) only says the process runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Response
from pydantic import BaseModel

from orderstack import wire
from orderstack.storage.types import utcnow
from orderstack.web.responses import JsonResponse

Probe = Callable[[], Awaitable[Any]]


class HealthBody(BaseModel):
    status: Literal["healthy", "unhealthy"]
    timestamp: str
    services: dict[str, Literal["up", "down"]]


class ReadyBody(BaseModel):
    status: Literal["ready", "not ready"]
    services: dict[str, Literal["up", "down"]]


HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {503: {"model": HealthBody}}


async def _probe(probe: Probe, timeout: float) -> str:
    """A probe is up when it returns anything but False within the timeout."""
    try:
        result = await asyncio.wait_for(probe(), timeout)
    except Exception:
        return "down"
    return "down" if result is False else "up"


class HealthCheck:
    """The dependencies' states, probed at most once per ``ttl`` (see the module docstring)."""

    def __init__(
        self,
        probes: Mapping[str, Probe],
        timeout: float,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probes, self._timeout, self._ttl, self._clock = dict(probes), timeout, ttl, clock
        self._states: dict[str, str] | None = None
        self._taken_at = 0.0
        self._round: asyncio.Future[dict[str, str]] | None = None
        self.rounds = 0
        self.ever_up: set[str] = set()  # dependencies seen up in some round

    async def states(self) -> dict[str, str]:
        if self._states is not None and self._clock() - self._taken_at < self._ttl:
            return self._states
        if self._round is None:
            self._round = asyncio.ensure_future(self._probe_all())
        # Shielded: a caller that gives up does not cancel the round the others wait for.
        return await asyncio.shield(self._round)

    async def _probe_all(self) -> dict[str, str]:
        try:
            names = list(self._probes)
            results = await asyncio.gather(*(_probe(self._probes[n], self._timeout) for n in names))
            self._states, self._taken_at = dict(zip(names, results, strict=True)), self._clock()
            self.ever_up.update(n for n, state in self._states.items() if state == "up")
            self.rounds += 1
            return self._states
        finally:
            self._round = None


async def readiness(
    check: HealthCheck, ready_on: Sequence[str], rides_out: Collection[str] = ()
) -> tuple[bool, dict[str, str]]:
    """Whether the replica is ready (``/readyz``'s 200), and the states of ``ready_on``:
    each up, or in ``rides_out`` and up once before. Also ``/metrics``' ``service_ready``."""
    states = await check.states()
    services = {name: states[name] for name in ready_on}
    ready = all(
        state == "up" or (name in rides_out and name in check.ever_up)
        for name, state in services.items()
    )
    return ready, services


def add_health_routes(
    app: FastAPI,
    check: HealthCheck,
    ready_on: Sequence[str],
    rides_out: Collection[str] = (),
) -> None:
    """``GET /health`` (every dependency) and ``GET /readyz`` (``ready_on`` only; those in
    ``rides_out`` only until they have been up once)."""

    @app.get("/health", tags=["health"], response_model=HealthBody, responses=HEALTH_RESPONSES)
    async def health() -> Response:
        services = await check.states()
        healthy = all(s == "up" for s in services.values())
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "timestamp": wire.timestamp(utcnow()),
            "services": services,
        }
        return JsonResponse(body, status_code=200 if healthy else 503)

    @app.get(
        "/readyz", tags=["health"], response_model=ReadyBody, responses={503: {"model": ReadyBody}}
    )
    async def readyz() -> Response:
        ready, services = await readiness(check, ready_on, rides_out)
        body = {"status": "ready" if ready else "not ready", "services": services}
        return JsonResponse(body, status_code=200 if ready else 503)

"""/health: every dependency probed at once, each bounded by a short timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel

from orderstack import wire
from orderstack.storage.types import utcnow
from orderstack.web.responses import JsonResponse

Probe = Callable[[], Awaitable[Any]]


class HealthBody(BaseModel):
    status: Literal["healthy", "unhealthy"]
    timestamp: str
    services: dict[str, Literal["up", "down"]]


HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {503: {"model": HealthBody}}


async def _probe(probe: Probe, timeout: float) -> str:
    """A probe is up when it returns anything but False within the timeout."""
    try:
        result = await asyncio.wait_for(probe(), timeout)
    except Exception:
        return "down"
    return "down" if result is False else "up"


async def health_response(probes: Mapping[str, Probe], timeout: float) -> JsonResponse:
    names = list(probes)
    states = await asyncio.gather(*(_probe(probes[n], timeout) for n in names))
    services = dict(zip(names, states, strict=True))
    healthy = all(s == "up" for s in states)
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": wire.timestamp(utcnow()),
        "services": services,
    }
    return JsonResponse(body, status_code=200 if healthy else 503)

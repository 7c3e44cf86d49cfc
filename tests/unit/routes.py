"""A client of one service's routes in process, on the fakes (no server, no lifespan)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI

from orderstack.web.errors import ErrorStyle, install_error_handlers


@asynccontextmanager
async def route_client(
    router: APIRouter, style: ErrorStyle, **state: object
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of an app holding only ``router``, its errors in ``style``, and
    ``state`` on ``app.state`` (``orders=`` or ``products=``: the service its routes use)."""
    app = FastAPI()
    install_error_handlers(app, style)
    for name, value in state.items():
        setattr(app.state, name, value)
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client

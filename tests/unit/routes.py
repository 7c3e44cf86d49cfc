"""A client of one service's routes in process, on the fakes (no server, no lifespan)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI

from orderstack.config import load_settings
from orderstack.web.auth import Access, Authenticate
from orderstack.web.errors import ErrorStyle, install_error_handlers


def open_access() -> Access:
    """The guards of a service with authentication off (the seed's behaviour)."""
    return Access.from_settings(load_settings(AUTH_MODE="off"))


def authenticated(app: FastAPI, access: Access) -> FastAPI:
    """``app`` with its callers found as the services find them (web/auth.py)."""
    app.add_middleware(Authenticate, backend=access.backend)
    return app


@asynccontextmanager
async def route_client(
    router: APIRouter, style: ErrorStyle, access: Access | None = None, **state: object
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of an app holding only ``router``, its errors in ``style``, its
    callers found by ``access`` (default: authentication off), and ``state`` on
    ``app.state`` (``orders=`` or ``products=``: the service its routes use)."""
    app = authenticated(FastAPI(), access or open_access())
    install_error_handlers(app, style)
    for name, value in state.items():
        setattr(app.state, name, value)
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client

"""Pieces every service's app factory uses: the FastAPI app with error mapping and limits."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from orderstack.config import Settings
from orderstack.web.errors import ErrorStyle, install_error_handlers
from orderstack.web.limits import BodySizeLimit, InFlightLimit
from orderstack.web.responses import JsonResponse

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def base_app(title: str, style: ErrorStyle, settings: Settings, lifespan: Lifespan) -> FastAPI:
    app = FastAPI(title=title, lifespan=lifespan, default_response_class=JsonResponse)
    install_error_handlers(app, style)
    app.add_middleware(BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES, style=style)
    # Added last, so it runs first: a shed request costs no parsing.
    app.add_middleware(InFlightLimit, max_in_flight=settings.MAX_IN_FLIGHT, style=style)

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """Liveness: the process serves HTTP (no dependency is probed). A constant answer,
        also the benchmark's ceiling for what this server stack can do per request."""
        return {"status": "ok"}

    return app


__all__ = ["base_app"]

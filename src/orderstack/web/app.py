"""Pieces every service's app factory uses: the FastAPI app with error mapping and limits."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from orderstack.config import Settings
from orderstack.web.errors import ErrorStyle, install_error_handlers
from orderstack.web.limits import BodySizeLimit
from orderstack.web.responses import JsonResponse

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def base_app(title: str, style: ErrorStyle, settings: Settings, lifespan: Lifespan) -> FastAPI:
    app = FastAPI(title=title, lifespan=lifespan, default_response_class=JsonResponse)
    install_error_handlers(app, style)
    app.add_middleware(BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES, style=style)
    return app


__all__ = ["base_app"]

"""Serving the apps with uvicorn: one service per process, or both in one process."""

from __future__ import annotations

import asyncio
import gc

import uvicorn
from fastapi import FastAPI

GC_YOUNG_THRESHOLD = 20_000  # CPython's default is 700 (2,000 from 3.12 on)


def _server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # no proxy in front that we trust; and a middleware less
        server_header=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def serve(app: FastAPI, host: str, port: int) -> None:
    _quieter_garbage_collection()
    _server(app, host, port).run()


def _quieter_garbage_collection() -> None:
    """The objects built at start-up (the app, its routes, SQLAlchemy's tables and compiled
    statements) live as long as the process: ``gc.freeze`` moves them out of the cyclic
    collector's way. A request allocates hundreds of short-lived objects, so a higher
    first-generation threshold makes young collections rarer (each one still cheap)."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, second, third)


async def serve_together(apps: list[tuple[FastAPI, int]], host: str) -> None:
    """Run several apps on one event loop; a stop signal stops them all."""
    _quieter_garbage_collection()
    servers = [_server(app, host, port) for app, port in apps]
    await asyncio.gather(*(server.serve() for server in servers))

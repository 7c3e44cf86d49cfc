"""Serving the apps with uvicorn: one service per process, or both in one process."""

from __future__ import annotations

import asyncio

import uvicorn
from fastapi import FastAPI


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
    _server(app, host, port).run()


async def serve_together(apps: list[tuple[FastAPI, int]], host: str) -> None:
    """Run several apps on one event loop; a stop signal stops them all."""
    servers = [_server(app, host, port) for app, port in apps]
    await asyncio.gather(*(server.serve() for server in servers))

"""The yardstick of the HTTP ladder: a bare FastAPI endpoint, one route at ``/`` answering a
constant JSON body, served by uvicorn with the services' flags (uvloop, httptools, no access
log, no server header; src/orderstack/serving.py). Nothing else: no middleware, no settings,
no garbage-collection tuning, the body returned as a dict the way a bare FastAPI app does.

    BARE_JSON='{"id": 1, ...}' PORT=8123 python -m harness.bare_app

``BARE_JSON`` is the body (the bench hands it the product service's own answer, so both
bodies have the same size); ``PORT`` and ``HOST`` where to listen.
"""

from __future__ import annotations

import json
import os
from typing import Any

import uvicorn
from fastapi import FastAPI

DEFAULT_BODY = '{"id": 1, "name": "bare", "price": 10.0, "qty": 5}'


def create_app(body: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/", response_model=None)  # as unannotated: no response model to validate
    async def bare() -> dict[str, Any]:
        return body

    return app


def main() -> None:
    app = create_app(json.loads(os.environ.get("BARE_JSON", DEFAULT_BODY)))
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        log_config=None,
    )


if __name__ == "__main__":
    main()

"""A stalled or lost database is a 503 the client may retry, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncmy.errors
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.types import Scope

from orderstack.config import load_settings
from orderstack.storage.errors import CommitOutcomeUnknown
from orderstack.web.app import base_app
from orderstack.web.errors import install_error_handlers
from orderstack.web.hot import Answer
from orderstack.web.metrics import HttpStats


@asynccontextmanager
async def _no_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


def _app(exc: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, "seed")

    @app.post("/orders")
    async def create() -> None:
        raise exc

    return app


@pytest.mark.parametrize(
    "exc",
    [
        PoolTimeoutError("QueuePool limit of size 10 overflow 10 reached"),
        OperationalError(
            "INSERT", {}, asyncmy.errors.OperationalError(2013, "Lost connection during query")
        ),
    ],
    ids=["pool exhausted", "connection lost"],
)
async def test_database_unavailable_is_a_503_with_retry_after(exc: Exception) -> None:
    transport = httpx.ASGITransport(app=_app(exc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/orders")
    assert response.status_code == 503
    assert response.json()["code"] == "DATABASE_UNAVAILABLE"
    assert response.headers["retry-after"] == "1"


async def test_a_real_defect_is_still_a_500_without_details() -> None:
    transport = httpx.ASGITransport(
        app=_app(KeyError("secret-internal")), raise_app_exceptions=False
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/orders")
    assert response.status_code == 500
    assert "secret-internal" not in response.text


LOST = OperationalError(
    "COMMIT", {}, asyncmy.errors.OperationalError(2006, "MySQL server has gone away")
)


@pytest.mark.parametrize(
    "exc", [LOST, CommitOutcomeUnknown(LOST)], ids=["connection lost", "commit outcome unknown"]
)
async def test_a_database_blip_is_answered_inside_the_app_and_never_escapes_it(
    exc: Exception,
) -> None:
    # An exception that leaves the app makes the server log a traceback and close the
    # client's connection after the answer: a 503 for a blip must be answered in the app.
    transport = httpx.ASGITransport(app=_app(exc))  # raises what escapes the app
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/orders")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


class _FailingPath:
    method, route, max_body = "POST", "/orders", 1024
    guard = None

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.answered = 0  # requests it took (and failed on)

    def match(self, scope: Scope) -> bool | None:
        return True if scope["path"] == "/orders" else None

    async def answer(self, scope: Scope, argument: object, body: bytes) -> Answer | None:
        self.answered += 1
        raise self.exc


@pytest.mark.parametrize("hot", [True, False], ids=["hot path", "route"])
async def test_a_database_blip_on_a_hot_path_is_the_routes_503_and_counted(hot: bool) -> None:
    settings = load_settings(HTTP_HOT_PATHS=hot)
    stats = HttpStats()
    path = _FailingPath(LOST)
    app = base_app(
        "t",
        "seed",
        settings,
        _no_lifespan,
        http_stats=stats,
        hot_paths=[path] if hot else [],
    )
    routed: list[str] = []

    @app.post("/orders")
    async def create() -> None:
        routed.append("/orders")
        raise LOST

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.post("/orders", content=b"{}", headers={"content-length": "2"})
    assert response.status_code == 503
    assert response.json()["code"] == "DATABASE_UNAVAILABLE"
    assert response.headers["retry-after"] == "1" and response.headers["x-request-id"]
    assert stats.requests.get(("POST", "/orders", 503)) == 1
    # The answer came from the path under test, not the other one.
    assert (path.answered, routed) == ((1, []) if hot else (0, ["/orders"]))


async def test_a_real_defect_on_a_hot_path_still_goes_up() -> None:
    app = base_app(
        "t", "seed", load_settings(), _no_lifespan, hot_paths=[_FailingPath(KeyError("x"))]
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/orders", content=b"{}", headers={"content-length": "2"})
    assert response.status_code == 500

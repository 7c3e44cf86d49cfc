"""A stalled or lost database is a 503 the client may retry, never a 500."""

from __future__ import annotations

import asyncmy.errors
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from orderstack.web.errors import install_error_handlers


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

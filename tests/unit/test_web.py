"""Shared HTTP pieces: the admin guard, the body size limit, error mapping, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import httpx
import orjson
import pytest
import structlog.testing
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from orderstack.config import load_settings
from orderstack.web.app import base_app
from orderstack.web.auth import Access
from orderstack.web.errors import ErrorStyle, install_error_handlers
from orderstack.web.limits import BodySizeLimit, InFlightLimit
from tests.unit.routes import authenticated

LIMIT = 1024


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


# -- admin guard -------------------------------------------------------------------------


def guarded_app(token: str | None) -> FastAPI:
    """A route behind the admin guard of a service with authentication off (the seed's
    behaviour): the ADMIN_TOKEN is the only credential."""
    settings = load_settings(AUTH_MODE="off", **({} if token is None else {"ADMIN_TOKEN": token}))
    access = Access.from_settings(settings)
    app = authenticated(FastAPI(), access)
    install_error_handlers(app, "seed")

    @app.post("/admin/cache/warmup", dependencies=[Depends(access.admin)])
    async def warmup() -> dict[str, str]:
        return {"done": "yes"}

    return app


async def call_admin(token: str | None, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with client(guarded_app(token)) as http:
        return await http.post("/admin/cache/warmup", headers=headers)


async def test_admin_route_passes_with_the_right_token() -> None:
    response = await call_admin("s3cret", "Bearer s3cret")

    assert response.status_code == 200
    assert response.json() == {"done": "yes"}


async def test_admin_scheme_is_case_insensitive() -> None:
    assert (await call_admin("s3cret", "bearer s3cret")).status_code == 200


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic czNjcmV0"])
async def test_admin_route_without_bearer_credentials_is_401(authorization: str | None) -> None:
    response = await call_admin("s3cret", authorization)

    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"
    assert response.headers["www-authenticate"] == "Bearer"  # the scheme to use


@pytest.mark.parametrize("given", ["wrong", "s3cre", "s3cret2", "S3CRET"])
async def test_admin_route_with_a_wrong_token_is_403(given: str) -> None:
    response = await call_admin("s3cret", f"Bearer {given}")

    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"


@pytest.mark.parametrize("configured", [None, ""])
@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic czNjcmV0", "Bearer anything", "Bearer s3cret"],
)
async def test_admin_routes_are_403_in_every_case_when_no_token_is_configured(
    configured: str | None, authorization: str | None
) -> None:
    response = await call_admin(configured, authorization)

    assert response.status_code == 403
    assert response.json()["code"] == "FORBIDDEN"
    assert "no ADMIN_TOKEN" in response.json()["error"]


async def test_admin_error_has_the_seed_shape() -> None:
    body = (await call_admin("s3cret", "Bearer wrong")).json()

    assert set(body) == {"error", "code", "timestamp"}
    assert body["timestamp"].endswith("Z")


# -- body size limit ---------------------------------------------------------------------


class Item(BaseModel):
    name: str


def limited_app(style: ErrorStyle) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield

    app = base_app("test", style, load_settings(MAX_BODY_BYTES=LIMIT), lifespan)

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.post("/items")
    async def items(item: Item) -> dict[str, int]:
        return {"received": len(item.name)}

    @app.post("/items/echo")
    async def echo(item: Item) -> dict[str, str]:
        return {"name": item.name}

    return app


def item_body(size: int) -> bytes:
    skeleton = b'{"name":""}'
    return b'{"name":"' + b"x" * (size - len(skeleton)) + b'"}'


async def chunks(body: bytes, size: int = 256) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("path", ["/raw", "/items"])
async def test_body_within_the_limit_is_accepted(path: str) -> None:
    async with client(limited_app("seed")) as http:
        response = await http.post(
            path, content=item_body(LIMIT), headers={"content-type": "application/json"}
        )

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/raw", "/items"])
async def test_too_large_body_is_413_in_the_seed_style(path: str) -> None:
    async with client(limited_app("seed")) as http:
        response = await http.post(
            path, content=item_body(LIMIT + 1), headers={"content-type": "application/json"}
        )

    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "PAYLOAD_TOO_LARGE"
    assert set(body) == {"error", "code", "timestamp"}


async def test_too_large_body_is_413_in_the_nest_style() -> None:
    async with client(limited_app("nest")) as http:
        response = await http.post("/items", content=item_body(LIMIT * 4))

    assert response.status_code == 413
    body = response.json()
    assert set(body) == {"statusCode", "message", "error"}
    assert body["statusCode"] == 413
    assert body["error"] == HTTPStatus(413).phrase


async def test_streamed_too_large_body_without_length_is_413() -> None:
    async with client(limited_app("seed")) as http:
        response = await http.post("/raw", content=chunks(item_body(LIMIT * 3)))

    assert response.request.headers.get("content-length") is None
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("size", [LIMIT + 1, LIMIT * 3])
async def test_streamed_too_large_body_to_a_model_route_is_413(size: int) -> None:
    async with client(limited_app("seed")) as http:
        response = await http.post(
            "/items",
            content=chunks(item_body(size)),
            headers={"content-type": "application/json"},
        )

    assert response.request.headers.get("content-length") is None
    assert response.status_code == 413
    assert response.json()["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("size", [len(b'{"name":"x"}'), LIMIT // 2, LIMIT])
async def test_streamed_body_within_the_limit_reaches_a_model_route_intact(size: int) -> None:
    skeleton = b'{"name":""}'
    name = "".join(chr(ord("a") + i % 26) for i in range(size - len(skeleton)))
    body = b'{"name":"' + name.encode() + b'"}'
    assert len(body) == size

    async with client(limited_app("seed")) as http:
        response = await http.post(
            "/items/echo",
            content=chunks(body, size=7),  # many small chunks, the last one partial
            headers={"content-type": "application/json"},
        )

    assert response.request.headers.get("content-length") is None
    assert response.status_code == 200
    assert response.json() == {"name": name}


async def test_non_numeric_content_length_is_rejected() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be reached")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    limit = BodySizeLimit(app, max_bytes=LIMIT, style="seed")
    await limit({"type": "http", "headers": [(b"content-length", b"12abc")]}, receive, send)

    assert sent[0]["status"] == 413


# -- error mapping -----------------------------------------------------------------------


def validating_app(style: ErrorStyle) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, style)

    @app.post("/items")
    async def items(item: Item) -> dict[str, str]:
        return {"name": item.name}

    return app


async def test_invalid_input_is_400_never_422_in_the_seed_style() -> None:
    async with client(validating_app("seed")) as http:
        missing = await http.post("/items", json={})
        bad_json = await http.post(
            "/items", content=b"{nope", headers={"content-type": "application/json"}
        )

    assert (missing.status_code, missing.json()["code"]) == (400, "VALIDATION_ERROR")
    assert "name is required" in missing.json()["error"]
    assert (bad_json.status_code, bad_json.json()["code"]) == (400, "INVALID_JSON")


async def test_invalid_input_lists_each_problem_in_the_nest_style() -> None:
    async with client(validating_app("nest")) as http:
        response = await http.post("/items", json={"name": 5})

    assert response.status_code == 400
    body = response.json()
    assert (body["statusCode"], body["error"]) == (400, "Bad Request")
    assert isinstance(body["message"], list)
    assert len(body["message"]) == 1
    assert body["message"][0].startswith("name")


async def test_unknown_route_is_404_in_the_service_shape() -> None:
    async with client(validating_app("nest")) as http:
        response = await http.get("/nowhere")

    assert response.status_code == 404
    assert response.json() == {"statusCode": 404, "message": "Not Found", "error": "Not Found"}


async def test_unexpected_error_is_500_without_details() -> None:
    app = validating_app("seed")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with structlog.testing.capture_logs() as logs:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/boom")

    assert response.status_code == 500
    assert response.json()["code"] == "INTERNAL_ERROR"
    assert "secret" not in response.text
    assert [entry["event"] for entry in logs] == ["unhandled error"]


# -- load shedding -----------------------------------------------------------------------


class SlowApp:
    """An ASGI app whose requests stay in flight until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    await app({"type": "http", "path": path, "headers": []}, receive, send)
    return sent


@pytest.mark.parametrize("style", ["seed", "nest"])
async def test_requests_beyond_the_in_flight_limit_get_a_quick_503_and_change_nothing(
    style: ErrorStyle,
) -> None:
    slow = SlowApp()
    limit = InFlightLimit(slow, max_in_flight=2, style=style)
    admitted = [asyncio.ensure_future(call(limit, "/orders")) for _ in range(2)]
    await asyncio.sleep(0)

    shed = await call(limit, "/orders")
    probe = asyncio.ensure_future(call(limit, "/livez"))  # probes always pass
    await asyncio.sleep(0)
    slow.release.set()
    answers = await asyncio.gather(*admitted, probe)

    assert shed[0]["status"] == 503
    assert (b"retry-after", b"1") in shed[0]["headers"]
    assert orjson.loads(shed[1]["body"])["code"] == "OVERLOADED"
    assert [a[0]["status"] for a in answers] == [200, 200, 200]
    assert slow.entered == 3  # the two admitted and the probe; never the shed one
    assert (await call(limit, "/orders"))[0]["status"] == 200  # room again once they finish


async def test_a_method_the_route_does_not_take_is_405_with_the_methods_it_does() -> None:
    app = FastAPI()
    install_error_handlers(app, "seed")

    @app.get("/things/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    @app.delete("/things/{thing_id}")
    async def delete_thing(thing_id: int) -> None:
        return None

    async with client(app) as http:
        response = await http.put("/things/1")

    assert response.status_code == 405
    assert response.json()["code"] == "METHOD_NOT_ALLOWED"
    # Starlette names the methods of the first route whose path matched.
    assert "GET" in response.headers["allow"].replace(" ", "").split(",")

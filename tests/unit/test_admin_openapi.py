"""The admin routes declare HTTP bearer auth in OpenAPI (so /docs has an Authorize button)
and still answer 401 / 403 / 200 as before, on the order service's real app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orderstack.bootstrap import order_app
from orderstack.cache.port import CachedProduct
from orderstack.config import load_settings
from orderstack.infrastructure import Infrastructure
from orderstack.web.admin import SECURITY_SCHEME

TOKEN = "s3cret"  # noqa: S105 - a test value


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(
        DATABASE_URL=f"sqlite:///{tmp_path / 'orderstack.db'}",
        LOCAL_BUS_PATH=str(tmp_path / "bus.db"),  # a scratch directory's removal can race
        ADMIN_TOKEN=TOKEN,
    )
    infra = Infrastructure.from_settings(settings, both_services=True)
    # Cached, of the epoch the order service knows: no HTTP needed.
    infra.known_epoch.value = "test-epoch"
    await infra.cache.put(CachedProduct(id=7, version=1, name="Cached", epoch="test-epoch"))
    app = order_app(settings, infra)
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            yield client
    finally:
        await infra.close()


async def test_openapi_declares_the_bearer_scheme_on_every_admin_route(
    http: httpx.AsyncClient,
) -> None:
    document: dict[str, Any] = (await http.get("/openapi.json")).json()

    scheme = document["components"]["securitySchemes"][SECURITY_SCHEME]
    assert scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
    admin = {p: ops for p, ops in document["paths"].items() if p.startswith("/admin/")}
    assert admin, "no admin route in the document"
    for path, operations in admin.items():
        for method, operation in operations.items():
            assert operation.get("security") == [{SECURITY_SCHEME: []}], (method, path)
    others = [
        (method, path)
        for path, operations in document["paths"].items()
        if not path.startswith("/admin/")
        for method, operation in operations.items()
        if "security" in operation
    ]
    assert others == []  # only the admin routes need the token


async def test_docs_page_is_served(http: httpx.AsyncClient) -> None:
    response = await http.get("/docs")

    assert response.status_code == 200
    assert "swagger" in response.text.lower()


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "UNAUTHORIZED"),
        ("Bearer", 401, "UNAUTHORIZED"),
        ("Basic czNjcmV0", 401, "UNAUTHORIZED"),
        ("Bearer wrong", 403, "FORBIDDEN"),
        (f"Bearer {TOKEN}", 200, None),
        (f"bearer {TOKEN}", 200, None),
    ],
)
async def test_admin_route_answers_as_before(
    http: httpx.AsyncClient, authorization: str | None, status: int, code: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await http.post("/admin/cache/warmup", json={"product_ids": [7]}, headers=headers)

    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["code"] == code
    else:
        assert response.json() == {"cached": [7], "not_found": []}

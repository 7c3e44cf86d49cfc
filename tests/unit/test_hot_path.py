"""The cached product GET answered before FastAPI's routing (web/hot.py): what a client
sees is the route's answer, byte for byte, and whatever the hot path cannot answer (a miss,
a tombstone, an id the route refuses, another method) is the route's to answer. The product
service in process on the embedded adapters (SQLite file, in-process bus and cache)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from orderstack.bootstrap import product_app
from orderstack.cache.port import CachedProduct
from orderstack.infrastructure import Infrastructure
from orderstack.products import api
from orderstack.products.service import ProductService
from orderstack.web.auth import Caller
from orderstack.web.hot import Answer, HotPaths, JsonBodyPath, check_fast_paths
from orderstack.web.metrics import HttpMetrics, HttpStats
from tests.unit.test_metrics import client, parse, settings_for, value

ANSWER_HEADERS = {"content-type", "content-length", "etag", "x-request-id", "x-database-epoch"}


@dataclass
class Service:
    http: httpx.AsyncClient
    app: FastAPI
    infra: Infrastructure

    @property
    def products(self) -> ProductService:
        service: ProductService = self.app.state.products
        return service

    async def create(self) -> dict[str, Any]:
        response = await self.http.post("/products", json={"name": "Lamp", "price": 12.5, "qty": 3})
        assert response.status_code == 201
        body: dict[str, Any] = response.json()
        return body

    async def cached(self, product_id: int) -> CachedProduct | None:
        """The entry as the product service reads it (of its database's epoch)."""
        epoch = await self.products.epoch.current()
        return (await self.infra.cache.get_many([product_id], epoch))[0]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    settings = settings_for(tmp_path)
    infra = Infrastructure.from_settings(settings, both_services=True)
    app = product_app(settings, infra)
    async with app.router.lifespan_context(app), client(app) as http:
        yield Service(http, app, infra)
    await infra.close()


def route_only(service: Service, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each call of the route's use case (``get_product``); the hot path never
    makes one."""
    calls: list[int] = []
    original = service.products.get_product

    async def counted(product_id: int) -> Any:
        calls.append(product_id)
        return await original(product_id)

    monkeypatch.setattr(service.products, "get_product", counted)
    return calls


async def test_a_cache_hit_is_the_routes_answer_without_the_route(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = await service.create()
    calls = route_only(service, monkeypatch)
    assert await service.cached(product["id"]) is not None  # put after the create's commit
    hit = await service.http.get(f"/products/{product['id']}", headers={"X-Request-ID": "r-1"})
    assert calls == []  # answered before the routing
    await service.infra.cache.close()  # empties the in-process cache: the next is a miss
    miss = await service.http.get(f"/products/{product['id']}", headers={"X-Request-ID": "r-1"})
    assert calls == [product["id"]]
    assert hit.status_code == miss.status_code == 200
    assert hit.content == miss.content
    assert hit.json() == product
    assert set(hit.headers) == set(miss.headers) == ANSWER_HEADERS
    assert hit.headers == miss.headers  # same ETag, same echoed request id
    # The miss put the row back: the next GET is a hit again, with a fresh request id.
    again = await service.http.get(f"/products/{product['id']}")
    assert calls == [product["id"]] and again.content == hit.content
    assert again.headers["x-request-id"] not in ("", "r-1")


async def test_a_change_is_answered_at_once_with_its_new_version(service: Service) -> None:
    product = await service.create()
    first = await service.http.get(f"/products/{product['id']}")
    patched = await service.http.patch(f"/products/{product['id']}", json={"qty": 7})
    assert patched.status_code == 200
    second = await service.http.get(f"/products/{product['id']}")
    assert (first.json()["qty"], second.json()["qty"]) == (3, 7)
    assert (first.headers["etag"], second.headers["etag"]) == ('"1"', '"2"')


async def test_what_the_hot_path_cannot_answer_is_the_routes(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = await service.create()
    deleted = await service.create()
    assert (await service.http.delete(f"/products/{deleted['id']}")).status_code == 204
    tombstone = await service.cached(deleted["id"])
    assert tombstone is not None and tombstone.deleted
    calls = route_only(service, monkeypatch)
    gone = await service.http.get(f"/products/{deleted['id']}")
    assert gone.status_code == 404 and gone.json()["statusCode"] == 404
    assert calls == [deleted["id"]]
    for path in ("/products/0", "/products/abc", "/products/" + "9" * 20, "/products/-1"):
        refused = await service.http.get(path)  # the route's validation, NestJS-style
        assert (refused.status_code, refused.json()["statusCode"]) == (400, 400), path
    head = await service.http.head(f"/products/{product['id']}")
    assert head.status_code == 405  # as the route answers it: GET only
    assert calls == [deleted["id"]]  # none of these reached the use case
    missing = await service.http.get("/products/987654")
    assert missing.status_code == 404


async def test_a_hot_answer_is_counted_under_its_route_template(service: Service) -> None:
    product = await service.create()
    for _ in range(3):
        assert (await service.http.get(f"/products/{product['id']}")).status_code == 200
    samples = parse((await service.http.get("/metrics")).text)
    counted = value(
        samples, "http_requests_total", method="GET", route="/products/{product_id}", status="200"
    )
    assert counted == 3


class _Path:
    route = "/things/{id}"
    guard = None  # an open route

    def __init__(self, answer: Answer | None, method: str = "GET", max_body: int = 0) -> None:
        self._answer, self.method, self.max_body = answer, method, max_body
        self.asked: list[bytes] = []

    def match(self, scope: Scope) -> int | None:
        return 1 if scope["path"] == "/things/1" else None

    async def answer(self, scope: Scope, argument: object, body: bytes) -> Answer | None:
        self.asked.append(body)
        await asyncio.sleep(0)
        return self._answer


async def _call(
    layer: HotPaths, method: str, path: str, body: bytes = b"", length: bool = True
) -> list[Message]:
    sent: list[Message] = []
    chunks = [body[:3], body[3:]]

    async def receive() -> Message:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-length", str(len(body)).encode())] if length else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    await layer(scope, receive, send)
    return sent


async def test_the_layer_answers_what_its_path_answers_and_passes_on_the_rest() -> None:
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()  # what the app reads of the body
        reached.append(f"{scope['method']} {scope['path']} {message.get('body', b'')!r}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    stats = HttpStats()
    answering = _Path(Answer(200, b'{"a":1}', ((b"etag", b'"4"'),)))
    # As base_app layers them: the metrics outside count what the fast path answers.
    layer = HttpMetrics(HotPaths(app, paths=[answering]), stats=stats)
    start, body = await _call(layer, "GET", "/things/1")
    assert start["status"] == 200 and body["body"] == b'{"a":1}'
    assert dict(start["headers"]) == {
        b"content-length": b"7",
        b"content-type": b"application/json",
        b"etag": b'"4"',
    }
    assert stats.requests == {("GET", "/things/{id}", 200): 1}
    await _call(layer, "POST", "/things/1", b"{}")  # not its method
    await _call(layer, "GET", "/things/2")  # not its path
    declining = _Path(None)
    await _call(HotPaths(app, paths=[declining]), "GET", "/things/1")  # it has no answer
    assert declining.asked == [b""]
    assert reached == ["POST /things/1 b'{}'", "GET /things/2 b''", "GET /things/1 b''"]
    assert answering.asked == [b""]


async def test_a_body_is_read_whole_for_the_path_and_replayed_when_it_declines() -> None:
    reached: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    created = _Path(Answer(201, b"{}"), method="POST", max_body=10)
    start, _ = await _call(HotPaths(app, paths=[created]), "POST", "/things/1", b'{"x": 1}')
    assert start["status"] == 201 and created.asked == [b'{"x": 1}'] and reached == []
    declining = _Path(None, method="POST", max_body=10)
    start, _ = await _call(HotPaths(app, paths=[declining]), "POST", "/things/1", b'{"x": 1}')
    assert start["status"] == 400 and reached == [b'{"x": 1}']  # the app got the whole body
    # Too long, or of unknown length: the app's, the path never asked.
    for body, length in ((b'{"x": 12345}', True), (b"{}", False)):
        reached.clear()
        untouched = _Path(Answer(201, b"{}"), method="POST", max_body=10)
        await _call(HotPaths(app, paths=[untouched]), "POST", "/things/1", body, length)
        assert untouched.asked == [] and reached in ([body], [body[:3]])


async def test_a_valid_product_is_created_without_the_route(
    service: Service, routed: list[str]
) -> None:
    created = await asyncio.gather(*(service.create() for _ in range(10)))
    assert len({p["id"] for p in created}) == 10 and routed == []
    refused = await service.http.post("/products", json={"name": "", "price": 1, "qty": 1})
    assert refused.status_code == 400 and routed == ["/products"]  # the route's answer


@pytest.mark.parametrize("hot", [True, False], ids=["fast path", "route"])
async def test_the_route_and_the_fast_path_answer_through_one_handler(
    tmp_path: Path, hot: bool, routed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A header the handler adds is on the answer whichever path took the request: it is
    # written in one place.
    handler = api.post_product

    async def with_header(
        service: ProductService, new: api.ProductCreate, caller: Caller
    ) -> Answer:
        answer = await handler(service, new, caller)
        return replace(answer, headers=(*answer.headers, (b"x-handled-by", b"post_product")))

    monkeypatch.setattr(api, "post_product", with_header)
    settings = settings_for(tmp_path, HTTP_HOT_PATHS=hot)
    infra = Infrastructure.from_settings(settings, both_services=True)
    app = product_app(settings, infra)
    async with app.router.lifespan_context(app), client(app) as http:
        created = await http.post("/products", json={"name": "Lamp", "price": 1, "qty": 1})
    await infra.close()
    assert created.status_code == 201
    assert created.headers["x-handled-by"] == "post_product"
    assert routed == ([] if hot else ["/products"])


async def _no_answer(_: object) -> Answer:
    raise AssertionError("not called")


def test_a_fast_path_must_be_true_to_its_route() -> None:
    router = APIRouter()

    @router.post("/things")
    async def create(key: Annotated[str | None, Header()] = None) -> None: ...

    @router.post("/guarded", dependencies=[Depends(lambda: None)])
    async def guarded() -> None: ...

    def path(route: str, headers: tuple[bytes, ...] = ()) -> JsonBodyPath[BaseModel]:
        return JsonBodyPath("POST", route, BaseModel, _no_answer, max_body=1, route_headers=headers)

    routes = router.routes
    check_fast_paths(routes, [path("/things", (b"key",))])
    with pytest.raises(ValueError, match="no route"):
        check_fast_paths(routes, [path("/elsewhere")])
    with pytest.raises(ValueError, match="dependencies"):
        check_fast_paths(routes, [path("/guarded")])
    with pytest.raises(ValueError, match=r"headers \['key'\]"):
        check_fast_paths(routes, [path("/things")])

"""``POST /orders`` through its hot path (web/hot.py) answers exactly as the route does: the
same requests sent to the order service with HTTP_HOT_PATHS on and off must get the same
status, headers and body (ids and times aside), valid or not. Both services in process
on the embedded adapters (SQLite file, in-process bus and cache)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from orderstack.bootstrap import product_app
from orderstack.infrastructure import Infrastructure
from orderstack.orders.domain import OrderStatus
from orderstack.orders.service import OrderService
from tests.unit.embedded_apps import running_apps
from tests.unit.test_metrics import client, parse, settings_for, value

JSON = {"content-type": "application/json"}

# (body, headers): what clients send, well and badly.
REQUESTS: list[tuple[bytes, dict[str, str]]] = [
    (b'{"product_id": 1, "total_price": 10}', JSON),
    (b'{"productId": 1, "totalPrice": 10.5}', JSON),
    (b'{"product_id": 1, "total_price": 30, "quantity": 3}', JSON),
    (b'{"product_id": 1, "total_price": 10}', {"content-type": "application/json; charset=utf-8"}),
    (b'{"product_id": 1, "total_price": 0}', JSON),
    (b'{"product_id": 999, "total_price": 10}', JSON),  # no such product
    (b'{"product_id": 1, "productId": 1, "total_price": 10}', JSON),  # both spellings
    (b'{"product_id": 1, "total_price": 10, "colour": "red"}', JSON),  # unknown field
    (b'{"product_id": 1}', JSON),
    (b'{"total_price": 10}', JSON),
    (b'{"product_id": "1", "total_price": 10}', JSON),
    (b'{"product_id": 1.0, "total_price": 10}', JSON),
    (b'{"product_id": true, "total_price": 10}', JSON),
    (b'{"product_id": 0, "total_price": 10}', JSON),
    (b'{"product_id": 9223372036854775808, "total_price": 10}', JSON),
    (b'{"product_id": 1, "total_price": -1}', JSON),
    (b'{"product_id": 1, "total_price": 10.123}', JSON),
    (b'{"product_id": 1, "total_price": "10"}', JSON),
    (b'{"product_id": 1, "total_price": 1e400}', JSON),
    (b'{"product_id": 1, "total_price": NaN}', JSON),
    (b'{"product_id": 1, "total_price": 10, "quantity": 0}', JSON),
    (b'{"product_id": 1, "total_price": 10, "quantity": 1001}', JSON),
    (b'{"product_id": 1, "total_price": 10, "quantity": "2"}', JSON),
    (b'{"product_id": 1, "total_price": 10, "quantity": null}', JSON),
    (b'{"product_id": 1, "total_price": 10', JSON),  # cut short
    (b"[]", JSON),
    (b"null", JSON),
    (b"", JSON),
    (b'{"product_id": 1, "total_price": 10}', {"content-type": "text/plain"}),
    (b'{"product_id": 1, "total_price": 10}', {}),
    (b'{"product_id": 1, "total_price": 10}', {**JSON, "Idempotency-Key": "hot-1"}),
    (b'{"product_id": 1, "total_price": 10}', {**JSON, "Idempotency-Key": "hot-1"}),  # again
    (b'{"product_id": 1, "total_price": 10}', {**JSON, "Idempotency-Key": ""}),
    (b'{"product_id": 1, "total_price": 10}' + b" " * 70_000, JSON),  # over MAX_BODY_BYTES
    # Money read exactly: more than two decimals however close to a cent, never rounded.
    (b'{"product_id": 1, "total_price": 1.0000000000000001}', JSON),
    (b'{"product_id": 1, "total_price": 2999.9999999999999999}', JSON),
    (b'{"product_id": 1, "total_price": 1.' + b"0" * 5000 + b"1}", JSON),
    (b'{"product_id": 1, "total_price": 1e1}', JSON),  # 10, exactly: accepted
    (b'{"product_id": 1, "total_price": 12.50}', JSON),  # two decimals: accepted
    # Bodies that are not JSON text: INVALID_JSON like any other.
    (b'\xff\xfe{"product_id": 1}', JSON),
    (b"[" * 30_000, JSON),
    (b'{"product_id": 1' + b"1" * 5000 + b', "total_price": 10}', JSON),
    (b'{"product_id": "x", "product_id": 1, "total_price": 10}', JSON),  # a name twice
]
# Not JSON text, or money with more than two decimals: a 400, never rounded, never 201.
REFUSED_BODIES = REQUESTS[-9:-6] + REQUESTS[-4:]
VOLATILE = {"id", "created_at", "timestamp"}  # differ between two runs by nature


def _assert_answered_by(
    hot: bool, path: str, statuses: list[int], via_route: list[bool], requests: object
) -> None:
    """Which path answered: with HTTP_HOT_PATHS off every 201 came through the FastAPI
    route; on, the plainest request (the first, a 201) was answered by the hot path, which
    leaves others to the route (a header it does not handle, say). Otherwise the
    differential could be comparing the route with itself."""
    created = [routed for status, routed in zip(statuses, via_route, strict=True) if status == 201]
    assert created, f"no 201 among the answers to {requests}"
    if hot:
        assert statuses[0] == 201 and not via_route[0], (
            f"HTTP_HOT_PATHS on, yet the plainest POST {path} got {statuses[0]} "
            f"{'through the route' if via_route[0] else ''}"
        )
    else:
        assert all(created), f"HTTP_HOT_PATHS off, yet a 201 came without the route {path}"


async def _answers(
    tmp_path: Path, hot: bool, routed: list[str]
) -> list[tuple[int, dict[str, str], Any]]:
    answers: list[tuple[int, dict[str, str], Any]] = []
    via_route: list[bool] = []
    async with running_apps(tmp_path, HTTP_HOT_PATHS=hot) as running:
        product_http, order_http = running.product_http, running.order_http
        created = await product_http.post("/products", json={"name": "a", "price": 1, "qty": 9})
        assert created.json()["id"] == 1
        for body, headers in REQUESTS:
            routed.clear()
            response = await order_http.post("/orders", content=body, headers=headers)
            via_route.append("/orders" in routed)
            doc = orjson.loads(response.content) if response.content else None
            if isinstance(doc, dict):
                doc = {k: v for k, v in doc.items() if k not in VOLATILE}
            kept = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
            answers.append((response.status_code, kept, doc))
        samples = parse((await order_http.get("/metrics")).text)
        counted = value(
            samples, "http_requests_total", method="POST", route="/orders", status="201"
        )
    _assert_answered_by(hot, "/orders", [a[0] for a in answers], via_route, REQUESTS)
    answers.append((0, {}, {"counted_201": counted}))
    return answers


async def test_the_hot_path_answers_every_request_as_the_route_does(
    tmp_path: Path, routed: list[str]
) -> None:
    by_route = await _answers(tmp_path / "routed", hot=False, routed=routed)
    hot = await _answers(tmp_path / "hot", hot=True, routed=routed)
    for request, a, b in zip(REQUESTS, by_route, hot, strict=False):
        assert a == b, request
    assert by_route[-1] == hot[-1]  # the 201s counted alike, under the route's template
    statuses = [status for status, _, _ in by_route[:-1]]
    assert statuses.count(201) >= 5 and 400 in statuses and 413 in statuses


@pytest.fixture
async def order_service(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, OrderService]]:
    async with running_apps(tmp_path) as running:
        await running.product_http.post("/products", json={"name": "a", "price": 1, "qty": 50})
        yield running.order_http, running.orders.state.orders


async def test_a_valid_order_is_placed_without_the_route(
    order_service: tuple[httpx.AsyncClient, OrderService], routed: list[str]
) -> None:
    http, service = order_service
    answers = await asyncio.gather(
        *(http.post("/orders", json={"product_id": 1, "total_price": 2}) for _ in range(20))
    )
    assert [a.status_code for a in answers] == [201] * 20
    assert len({a.json()["id"] for a in answers}) == 20
    assert all(a.headers["x-request-id"] for a in answers)
    assert routed == []  # none of them went through FastAPI's routing
    assert service.entered[OrderStatus.PENDING] == 20
    refused = await http.post("/orders", json={"product_id": "1"})
    assert refused.status_code == 400 and routed == ["/orders"]  # the route's answer


PRODUCT_REQUESTS: list[tuple[bytes, dict[str, str]]] = [
    (b'{"name": "Lamp", "price": 12.5, "qty": 3}', JSON),
    (b'{"name": "  Lamp  ", "price": 12, "qty": 0}', {"content-type": "application/json; x=y"}),
    (b'{"name": "", "price": 12, "qty": 3}', JSON),
    (b'{"name": "Lamp", "price": 0, "qty": 3}', JSON),
    (b'{"name": "Lamp", "price": 1.005, "qty": 3}', JSON),
    (b'{"name": "Lamp", "price": "12", "qty": 3}', JSON),
    (b'{"name": "Lamp", "price": 12, "qty": -1}', JSON),
    (b'{"name": "Lamp", "price": 12, "qty": 1.5}', JSON),
    (b'{"name": "Lamp", "price": 12, "qty": 3, "colour": "red"}', JSON),
    (b'{"name": "Lamp", "price": 12}', JSON),
    (b'{"name": 5, "price": 12, "qty": 3}', JSON),
    (b'{"name": "' + b"x" * 256 + b'", "price": 12, "qty": 3}', JSON),
    (b"{", JSON),
    (b"", JSON),
    (b'{"name": "Lamp", "price": 12, "qty": 3}', {"content-type": "text/plain"}),
    (b'{"name": "Lamp", "price": 12, "qty": 3}', {}),
    (b'{"name": "Lamp", "price": 0.009999999999999999999, "qty": 3}', JSON),
    (b'{"name": "Lamp", "price": 9999999999.990000000000001, "qty": 3}', JSON),
]


async def _product_answers(
    tmp_path: Path, hot: bool, routed: list[str]
) -> list[tuple[int, dict[str, str], Any]]:
    settings = settings_for(tmp_path, HTTP_HOT_PATHS=hot)
    infra = Infrastructure.from_settings(settings, both_services=True)
    products = product_app(settings, infra)
    answers: list[tuple[int, dict[str, str], Any]] = []
    via_route: list[bool] = []
    async with products.router.lifespan_context(products), client(products) as http:
        for body, headers in PRODUCT_REQUESTS:
            routed.clear()
            response = await http.post("/products", content=body, headers=headers)
            via_route.append("/products" in routed)
            doc = orjson.loads(response.content) if response.content else None
            if isinstance(doc, dict):
                doc = {k: v for k, v in doc.items() if k not in VOLATILE | {"updated_at"}}
            kept = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
            answers.append((response.status_code, kept, doc))
        _assert_answered_by(hot, "/products", [a[0] for a in answers], via_route, PRODUCT_REQUESTS)
        listed = (await http.get("/products")).json()
        answers.append((0, {}, [(p["name"], p["qty"]) for p in listed["items"]]))
    await infra.close()
    return answers


async def test_product_creation_on_the_hot_path_answers_as_the_route_does(
    tmp_path: Path, routed: list[str]
) -> None:
    by_route = await _product_answers(tmp_path / "routed", hot=False, routed=routed)
    hot = await _product_answers(tmp_path / "hot", hot=True, routed=routed)
    for request, a, b in zip(PRODUCT_REQUESTS, by_route, hot, strict=False):
        assert a == b, request
    assert by_route[-1] == hot[-1] == (0, {}, [("Lamp", 3), ("Lamp", 0)])
    assert [status for status, _, _ in by_route[:-1]].count(201) == 2


@pytest.mark.parametrize("hot", [True, False], ids=["hot path", "route"])
async def test_money_is_read_exactly_and_bodies_that_are_not_json_are_invalid_json(
    tmp_path: Path, hot: bool
) -> None:
    async with running_apps(tmp_path, HTTP_HOT_PATHS=hot) as running:
        product_http, order_http = running.product_http, running.order_http
        await product_http.post("/products", json={"name": "a", "price": 1, "qty": 9})
        codes = []
        for body, headers in REFUSED_BODIES:
            response = await order_http.post("/orders", content=body, headers=headers)
            codes.append((response.status_code, response.json()["code"]))
        listed = (await order_http.get("/orders")).json()
        tenth = await order_http.post("/orders", content=REQUESTS[-6][0], headers=JSON)
    assert codes == [(400, "VALIDATION_ERROR")] * 3 + [(400, "INVALID_JSON")] * 4
    assert listed == []  # none of them placed an order
    assert tenth.status_code == 201 and tenth.json()["total_price"] == 10

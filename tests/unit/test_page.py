"""The page's routes on the order service, without a browser (tests/e2e/test_page.py drives
the page in one): the page and its assets (a basket placed as ``items`` at the total shown,
each failure's reason in words, data written as text only, every control labelled), and the
relay of its product calls to the product service, which passes answers through as they
are and fails over between replicas."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import httpx
from fastapi import FastAPI

from orderstack.orders.page import ProductRelay, page_router
from orderstack.web.errors import install_error_handlers


def _app(relay: ProductRelay) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, "seed")
    app.include_router(page_router(relay))
    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orders")


async def test_the_page_and_its_assets_come_from_this_origin_only() -> None:
    relay = ProductRelay(["http://products"])
    async with _client(_app(relay)) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from another host
        assert '<script src="/ui/page.js" defer>' in page.text
        script = await client.get("/ui/page.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "/orders/" in script.text and "/ui/products" in script.text
        style = await client.get("/ui/page.css")
        assert style.headers["content-type"].startswith("text/css")
        assert ":focus-visible" in style.text
    await relay.close()


class _Controls(HTMLParser):
    """The page's ids, its form controls' ids, the ids its labels name, and any inline
    script or style (the CSP refuses them)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.controls: set[str] = set()
        self.labelled: set[str] = set()
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if named.get("id"):
            self.ids.add(str(named["id"]))
        if tag in {"input", "select", "textarea"}:
            self.controls.add(str(named.get("id")))
        if tag == "label" and named.get("for"):
            self.labelled.add(str(named["for"]))
        if (tag == "script" and "src" not in named) or tag == "style" or "style" in named:
            self.inline.append(tag)
        self.inline += [f"{tag} {name}" for name in named if name.startswith("on")]


async def _assets() -> tuple[str, str]:
    relay = ProductRelay(["http://products"])
    async with _client(_app(relay)) as client:
        html, script = (await client.get("/")).text, (await client.get("/ui/page.js")).text
    await relay.close()
    return html, script


async def test_the_page_has_a_basket_and_every_control_is_labelled() -> None:
    html, script = await _assets()
    page = _Controls()
    page.feed(html)
    for basket_part in (
        "basket-form",
        "basket-product",
        "basket-quantity",
        "basket",
        "basket-total",
        "place-order",
        "orders",
        "announcer",
    ):
        assert basket_part in page.ids, basket_part
    assert page.controls and page.controls <= page.labelled, page.controls - page.labelled
    assert not page.inline  # no inline script, style or handler: the CSP would refuse them
    # Every element the script looks up by a fixed id is on the page.
    looked_up = set(re.findall(r'\$\("([^"]+)"\)', script))
    assert looked_up and looked_up <= page.ids, looked_up - page.ids
    # The fields the script adds to the basket's lines get labels of their own.
    assert "label.htmlFor = field.id" in script


async def test_the_script_places_the_basket_at_the_total_shown() -> None:
    _, script = await _assets()
    placing = script[script.index("async function placeOrder") :]
    placing = placing[: placing.index("\n  }\n")]
    assert 'call("POST", "/orders", {' in placing
    assert (
        "items: lines.map((line) => ({ product_id: line.product_id, quantity: line.quantity }))"
        in placing
    )
    assert "total_price: total / 100" in placing  # the total the basket shows, in cents / 100
    assert "const total = basketCents();" in placing
    # A line keeps the price shown when it was added (tests/e2e/test_page.py changes the
    # price behind the page's back and sees the order fail with price_changed).
    assert "price: product.price" in script


async def test_the_script_says_why_an_order_failed() -> None:
    _, script = await _assets()
    for words in (
        '"price_changed"',
        '"price changed: now " + money(failure.catalog_total)',
        '"not enough stock: "',
        "line.requested",
        "line.available",
        "item.unit_price",
    ):
        assert words in script, words


async def test_the_script_writes_data_as_text_only() -> None:
    _, script = await _assets()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setAttribute("on',
        ".src =",
    ):
        assert sink not in script, sink
    assert "textContent" in script


async def test_the_page_is_not_part_of_the_api_schema() -> None:
    relay = ProductRelay(["http://products"])
    assert not _app(relay).openapi()["paths"]
    await relay.close()


async def test_product_calls_are_relayed_as_they_are() -> None:
    seen: list[httpx.Request] = []

    def product_service(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(400, json={"statusCode": 400, "message": ["qty is required"]})
        return httpx.Response(200, json={"items": [], "total": 0, "limit": 5, "offset": 10})

    relay = ProductRelay(["http://products"], transport=httpx.MockTransport(product_service))
    async with _client(_app(relay)) as client:
        listed = await client.get("/ui/products", params={"limit": 5, "offset": 10})
        assert listed.status_code == 200
        assert listed.json()["offset"] == 10
        refused = await client.post("/ui/products", json={"name": "Lamp", "price": 1})
        assert refused.status_code == 400
        assert refused.json()["message"] == ["qty is required"]
        assert (await client.get("/ui/products", params={"limit": 500})).status_code == 400
        # A plain cross-site form post (no CORS preflight) stays what it is: not JSON.
        plain = await client.post(
            "/ui/products", content=b'{"name": "x"}', headers={"content-type": "text/plain"}
        )
        assert plain.status_code == 400
    await relay.close()
    assert str(seen[0].url) == "http://products/products?limit=5&offset=10"
    assert json.loads(seen[1].content) == {"name": "Lamp", "price": 1}
    assert seen[1].headers["content-type"] == "application/json"
    assert seen[2].headers["content-type"] == "text/plain"  # passed on as it came
    assert len(seen) == 3  # the out-of-range limit never left the order service


async def test_a_refused_connection_goes_to_the_next_replica_and_none_is_a_503() -> None:
    down = {"a"}

    def product_service(request: httpx.Request) -> httpx.Response:
        if request.url.host in down:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, json={"id": 1})

    relay = ProductRelay(["http://a", "http://b"], transport=httpx.MockTransport(product_service))
    async with _client(_app(relay)) as client:
        for _ in range(2):  # whichever replica comes first
            created = await client.post("/ui/products", json={"name": "x", "price": 1, "qty": 1})
            assert created.status_code == 201
        down.add("b")
        unavailable = await client.get("/ui/products")
        assert unavailable.status_code == 503
        assert unavailable.json()["code"] == "PRODUCT_SERVICE_UNAVAILABLE"
    await relay.close()

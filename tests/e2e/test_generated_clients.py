"""Clients generated from the services' own ``/openapi.json`` (openapi-python-client) work.

Each service's document is fetched from `orderstack dev`, a Python client generated from it
once per module into a temporary directory and imported; the seed's flows then run through
the generated functions only: a product created, an order of several units placed and read
until it settles, cancelled, the orders listed page by page by following the ``Link``
header's ``rel="next"``, the stock adjusted, the cache warmed with the admin token. The
modules and functions carry the operation ids' names (``api/orders/orders_create.py``...),
which tests/unit/test_openapi.py pins.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from orderstack.config import DEV_ADMIN_TOKEN
from tests.unit.test_openapi import EXPECTED_OPERATION_IDS

pytestmark = pytest.mark.e2e

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGES = {"order": "order_service_client", "product": "product_service_client"}
# What a user of the generated clients imports: api/<tag>/<operation id>.py.
EXPECTED_MODULES = {
    f"api/{operation_id.split('-', 1)[0]}/{operation_id.replace('-', '_')}.py"
    for operation_id in EXPECTED_OPERATION_IDS.values()
    if "-" in operation_id
} | {f"api/health/{name}.py" for name in ("health", "readyz", "livez")}
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="next"')


@dataclass
class Generated:
    root: Path  # where the two packages were generated
    product_url: str
    order_url: str

    def api(self, service: str, module: str) -> ModuleType:
        """``api("order", "orders.orders_create")``: the generated module."""
        return importlib.import_module(f"{PACKAGES[service]}.api.{module}")

    def models(self, service: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGES[service]}.models")

    def client(self, service: str, token: str | None = None) -> Any:
        package = importlib.import_module(PACKAGES[service])
        url = self.order_url if service == "order" else self.product_url
        if token is not None:
            return package.AuthenticatedClient(base_url=url, token=token, timeout=10.0)
        return package.Client(base_url=url, timeout=10.0, raise_on_unexpected_status=True)


@pytest.fixture(scope="module")
def generated(
    dev: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Generated]:
    product_url, order_url = dev
    root = tmp_path_factory.mktemp("generated_clients")
    config = root / "config.yaml"
    config.write_text("post_hooks: []\n", encoding="utf-8")  # no formatter run on the output
    for service, url in (("order", order_url), ("product", product_url)):
        document = root / f"{service}.json"
        document.write_bytes(
            httpx.get(f"{url}/openapi.json", timeout=10).raise_for_status().content
        )
        run = subprocess.run(
            [
                str(GENERATOR),
                "generate",
                "--path",
                str(document),
                "--meta",
                "none",
                "--output-path",
                str(root / PACKAGES[service]),
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output
        # A warning means part of the document was skipped: no endpoint or model may be.
        assert "Warning" not in output, output
    sys.path.insert(0, str(root))
    try:
        yield Generated(root, product_url, order_url)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] in PACKAGES.values()]:
            del sys.modules[name]


def test_the_modules_are_named_after_the_operation_ids(generated: Generated) -> None:
    modules = {
        str(path.relative_to(generated.root / package))
        for package in PACKAGES.values()
        for path in (generated.root / package / "api").glob("*/*.py")
        if path.name != "__init__.py"
    }
    assert modules == EXPECTED_MODULES
    # Each has the four functions a user calls.
    create = generated.api("order", "orders.orders_create")
    for function in ("sync", "sync_detailed", "asyncio", "asyncio_detailed"):
        assert callable(getattr(create, function)), function
    models = generated.models("order")
    assert {"OrderCreate", "OrderOut", "OrderStatus", "SeedError"} <= set(dir(models))


def _settled(generated: Generated, orders: Any, order_id: int) -> Any:
    get = generated.api("order", "orders.orders_get")
    deadline = time.monotonic() + 15
    while True:
        order = get.sync(order_id, client=orders)
        if order.status.value in ("confirmed", "failed") or time.monotonic() > deadline:
            return order
        time.sleep(0.05)


def _qty(generated: Generated, products: Any, product_id: int) -> int:
    product = generated.api("product", "products.products_get").sync(product_id, client=products)
    qty: int = product.qty
    return qty


def test_the_seed_flows_through_the_generated_clients(generated: Generated) -> None:
    product_models = generated.models("product")
    order_models = generated.models("order")
    products = generated.client("product")
    orders = generated.client("order")

    # A product; an order of three units, pending at first, then confirmed.
    created = generated.api("product", "products.products_create").sync_detailed(
        client=products,
        body=product_models.ProductCreate(name="Generated client", price=12.5, qty=10),
    )
    assert created.status_code == 201, created.content
    product = created.parsed
    assert isinstance(product, product_models.ProductOut) and product.qty == 10
    assert created.headers.get("etag")

    create_order = generated.api("order", "orders.orders_create")
    placed = create_order.sync_detailed(
        client=orders,
        body=order_models.OrderCreate(product_id=product.id, total_price=37.5, quantity=3),
    )
    assert placed.status_code == 201, placed.content
    order = placed.parsed
    assert isinstance(order, order_models.OrderOut)
    assert (order.status.value, order.quantity, order.total_price) == ("pending", 3, 37.5)
    assert order.created_at.tzinfo is not None  # "...Z" read as UTC

    settled = _settled(generated, orders, order.id)
    assert settled.status.value == "confirmed"
    assert _qty(generated, products, product.id) == 7

    # Cancelled: the three units go back to stock.
    cancelled = generated.api("order", "orders.orders_cancel").sync_detailed(
        order.id, client=orders
    )
    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.parsed.status.value == "cancelled"
    deadline = time.monotonic() + 15
    while _qty(generated, products, product.id) != 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _qty(generated, products, product.id) == 10

    # More orders, then the product's orders listed two at a time through the Link header.
    ids = [order.id]
    for _ in range(4):
        more = create_order.sync(
            client=orders, body=order_models.OrderCreate(product_id=product.id, total_price=12.5)
        )
        assert isinstance(more, order_models.OrderOut), more
        ids.append(more.id)
    list_orders = generated.api("order", "orders.orders_list")
    listed: list[int] = []
    pages = 0
    query: dict[str, Any] = {"product_id": product.id, "limit": 2}
    while True:
        page = list_orders.sync_detailed(client=orders, **query)
        assert page.status_code == 200, page.content
        pages += 1
        listed += [o.id for o in page.parsed]
        link = page.headers.get("link")
        if link is None:
            break
        next_url = _NEXT.search(link)
        assert next_url, link
        cursor = parse_qs(urlsplit(next_url[1]).query)
        assert cursor["product_id"] == [str(product.id)]  # the filter is kept
        query = {
            "product_id": product.id,
            "after": int(cursor["after"][0]),
            "limit": int(cursor["limit"][0]),
        }
        assert pages < 10, "the Link header never ends"
    assert listed == sorted(ids) and pages == 3
    for_product = generated.api("order", "orders.orders_for_product").sync(
        product.id, client=orders
    )
    assert sorted(o.id for o in for_product) == sorted(ids)

    # Stock adjusted (and a removal that would go below 0 refused, its body parsed).
    for new in ids[1:]:
        assert _settled(generated, orders, new).status.value == "confirmed"
    adjust = generated.api("product", "products.products_adjust_stock")
    adjusted = adjust.sync_detailed(
        product.id,
        client=products,
        body=product_models.StockAdjustmentCreate(delta=5, reason="restock"),
    )
    assert adjusted.status_code == 201, adjusted.content
    assert adjusted.parsed.qty_after == 10 - 4 + 5 == adjusted.parsed.product.qty
    refused = adjust.sync_detailed(
        product.id,
        client=products,
        body=product_models.StockAdjustmentCreate(delta=-1000, reason="too many"),
    )
    assert refused.status_code == 409
    assert isinstance(refused.parsed, product_models.NestRefusal)
    assert _qty(generated, products, product.id) == 11

    # The admin route with the generated AuthenticatedClient (bearer token).
    warm = generated.api("order", "admin.admin_warm_cache")
    warmed = warm.sync_detailed(
        client=generated.client("order", token=DEV_ADMIN_TOKEN),
        body=order_models.WarmupRequest(product_ids=[product.id]),
    )
    assert warmed.status_code == 200, warmed.content
    assert (warmed.parsed.cached, warmed.parsed.not_found) == ([product.id], [])


def test_the_other_product_routes_through_the_generated_client(generated: Generated) -> None:
    models = generated.models("product")
    products = generated.client("product")
    api = "products.products_"
    made = generated.api("product", f"{api}create").sync(
        client=products, body=models.ProductCreate(name="Patch me", price=1.0, qty=1)
    )
    got = generated.api("product", f"{api}get").sync_detailed(made.id, client=products)
    etag = got.headers["etag"]

    update = generated.api("product", f"{api}update")
    patched = update.sync_detailed(
        made.id, client=products, body=models.ProductPatch(price=2.0), if_match=etag
    )
    assert patched.status_code == 200, patched.content
    assert patched.parsed.price == 2.0
    stale = update.sync_detailed(
        made.id, client=products, body=models.ProductPatch(price=3.0), if_match=etag
    )
    assert stale.status_code == 412  # the version it was read at is gone

    page = generated.api("product", f"{api}list").sync(client=products, limit=100)
    assert isinstance(page, models.ProductPage) and page.limit == 100
    assert made.id in {p.id for p in page.items} or page.total > 100

    deleted = generated.api("product", f"{api}delete").sync_detailed(made.id, client=products)
    assert deleted.status_code == 204
    gone = generated.api("product", f"{api}get").sync_detailed(made.id, client=products)
    assert gone.status_code == 404

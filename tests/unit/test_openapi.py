"""The OpenAPI documents say what the services answer: invalid input is 400 (FastAPI's
default 422 "Validation Error" is not listed), integer bounds are integers (2^63 - 1, not
a float that reads back as 2^63), money is a JSON number with standard bounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orderstack.bootstrap import order_app, product_app
from orderstack.infrastructure import Infrastructure
from orderstack.wire import MAX_ID
from tests.unit.test_metrics import settings_for


@pytest.fixture(params=["order", "product"])
def document(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    settings = settings_for(tmp_path)
    infra = Infrastructure.from_settings(settings, both_services=True)
    factory = order_app if request.param == "order" else product_app
    doc: dict[str, Any] = factory(settings, infra).openapi()
    return doc


def _walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk(value))
    return found


def test_every_operation_lists_400_and_422_only_where_a_route_answers_it(
    document: dict[str, Any],
) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if operation.get("parameters") or operation.get("requestBody"):
                assert "400" in responses, (method, path)
            if "422" in responses:
                assert (method, path) == ("post", "/orders")
                assert "IDEMPOTENCY_KEY_REUSED" in responses["422"]["description"]
    assert "HTTPValidationError" not in json.dumps(document)


def test_integer_bounds_are_integers_and_ids_end_at_2_63_minus_1(
    document: dict[str, Any],
) -> None:
    integers = [n for n in _walk(document) if n.get("type") == "integer"]
    bounds = [n[k] for n in integers for k in ("minimum", "maximum") if k in n]
    assert bounds and all(isinstance(b, int) for b in bounds)
    assert MAX_ID in bounds and 2**63 not in bounds


def test_money_is_a_number_with_standard_bounds(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    money = [
        schema["properties"][name]
        for schema in schemas.values()
        for name in ("price", "total_price")
        if name in schema.get("properties", {}) and "In" not in schema.get("title", "")
    ]
    money = [m for m in money if "maximum" in m]  # the inputs (answers have no bounds)
    assert money
    for field in money:
        assert field["type"] == "number" and "anyOf" not in field
        assert field["maximum"] == 9999999999.99
        assert "le" not in field and "ge" not in field and "decimal_places" not in field


EXPECTED_OPERATION_IDS = {
    ("post", "/orders"): "orders-create",
    ("get", "/orders"): "orders-list",
    ("get", "/orders/{order_id}"): "orders-get",
    ("post", "/orders/{order_id}/cancel"): "orders-cancel",
    ("post", "/orders/{order_id}/confirm"): "orders-confirm",
    ("get", "/orders/product/{product_id}"): "orders-for-product",
    ("get", "/orders/events"): "orders-events",
    ("get", "/orders/{order_id}/events"): "orders-get-events",
    ("post", "/admin/cache/warmup"): "admin-warm-cache",
    ("post", "/products"): "products-create",
    ("get", "/products"): "products-list",
    ("get", "/products/{product_id}"): "products-get",
    ("patch", "/products/{product_id}"): "products-update",
    ("delete", "/products/{product_id}"): "products-delete",
    ("post", "/products/{product_id}/stock-adjustments"): "products-adjust-stock",
    ("get", "/health"): "health",
    ("get", "/readyz"): "readyz",
    ("get", "/livez"): "livez",
}


def test_operation_ids_are_short_unique_names_a_generated_client_can_use(
    document: dict[str, Any],
) -> None:
    ids = {
        (method, path): operation["operationId"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }

    assert len(set(ids.values())) == len(ids)  # unique within the service
    for key, operation_id in ids.items():
        assert operation_id == EXPECTED_OPERATION_IDS[key], key

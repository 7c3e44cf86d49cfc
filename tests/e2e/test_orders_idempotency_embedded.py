"""Idempotency keys on the embedded default (`orderstack dev`, SQLite): exact keys, one
request per key, 422 for a key reused with another body."""

from __future__ import annotations

import httpx
import pytest

from .workflows import create_product

pytestmark = pytest.mark.e2e


async def test_idempotency_keys_on_the_embedded_default(dev: tuple[str, str]) -> None:
    product_url, order_url = dev
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, product_url, "Keyed", 10, 50)
        body = {"product_id": product["id"], "total_price": 10}

        async def post(key: str, json: dict[str, object] = body) -> httpx.Response:
            return await client.post(
                f"{order_url}/orders", json=json, headers={"Idempotency-Key": key}
            )

        first = await post("abc")
        assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
        replay = await post("abc", {**body, "total_price": 10.00})
        assert replay.status_code == 201
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == first.json()

        other_case = await post("ABC")
        assert other_case.status_code == 201 and "Idempotent-Replayed" not in other_case.headers
        assert other_case.json()["id"] != first.json()["id"]

        before = (await client.get(f"{order_url}/orders/product/{product['id']}")).json()
        reused = await post("abc", {**body, "total_price": 11})
        assert reused.status_code == 422
        assert reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
        after = (await client.get(f"{order_url}/orders/product/{product['id']}")).json()
        assert [o["id"] for o in after] == [o["id"] for o in before]

"""Idempotency keys on the embedded default (`orderstack dev`, SQLite): exact keys, one
request per key, 422 for a key reused with another body."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.processes import ServiceProcess, free_port

from .workflows import create_product

pytestmark = pytest.mark.e2e

_SERVER_VARIABLES = ("DATABASE_URL", "DB_HOST", "RABBITMQ_URL", "REDIS_URL", "REDIS_HOST")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("embedded-idempotency")
    order_port, product_port = free_port(), free_port()
    saved = {k: os.environ.pop(k) for k in _SERVER_VARIABLES if k in os.environ}
    env = {
        "ORDER_PORT": str(order_port),
        "PRODUCT_PORT": str(product_port),
        "DATABASE_URL": f"sqlite:///{workdir / 'orderstack.db'}",
    }
    process = ServiceProcess("dev", ["dev"], env, Path(workdir), port=order_port).start()
    try:
        process.wait_healthy()
        yield f"http://127.0.0.1:{product_port}", f"http://127.0.0.1:{order_port}"
    finally:
        process.stop()
        os.environ.update(saved)


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

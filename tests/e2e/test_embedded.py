"""The same workflows against the embedded default: `orderstack dev`, no servers at all."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from .workflows import (
    complete_order_flow,
    create_product,
    error_handling_flow,
    health_is_green,
    order_queries_flow,
    wait_terminal,
)

pytestmark = pytest.mark.e2e


async def test_complete_order_flow_embedded(dev: tuple[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await complete_order_flow(client, *dev)


async def test_error_handling_flow_embedded(dev: tuple[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await error_handling_flow(client, *dev)


async def test_health_embedded(dev: tuple[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await health_is_green(client, *dev)


async def test_warmup_with_the_documented_dev_token(dev: tuple[str, str]) -> None:
    product_url, order_url = dev
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, product_url, "Warm", 1, 1)
        response = await client.post(
            f"{order_url}/admin/cache/warmup",
            json={"product_ids": [product["id"]]},
            headers={"Authorization": "Bearer dev-admin-token"},
        )
        assert response.status_code == 200
        assert response.json()["cached"] == [product["id"]]


async def test_concurrent_orders_never_oversell_embedded(dev: tuple[str, str]) -> None:
    product_url, order_url = dev
    async with httpx.AsyncClient(timeout=30) as client:
        product = await create_product(client, product_url, "Scarce", 1, 10)
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{order_url}/orders", json={"product_id": product["id"], "total_price": 1}
                )
                for _ in range(60)
            )
        )
        assert all(r.status_code == 201 for r in responses)
        settled = await asyncio.gather(
            *(wait_terminal(client, order_url, r.json()["id"], timeout=60) for r in responses)
        )
        assert [o["status"] for o in settled].count("confirmed") == 10
        assert (await client.get(f"{product_url}/products/{product['id']}")).json()["qty"] == 0


async def test_order_queries_follow_the_links_embedded(dev: tuple[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await order_queries_flow(client, *dev)

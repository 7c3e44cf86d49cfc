"""The seed's example workflows against both services as separate processes."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as aioredis

from harness.stack import Stack

from .workflows import (
    complete_order_flow,
    create_product,
    error_handling_flow,
    health_is_green,
    order_queries_flow,
)

pytestmark = pytest.mark.e2e


async def test_complete_order_flow(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await complete_order_flow(client, stack.product_url, stack.order_url)


async def test_error_handling_flow(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await error_handling_flow(client, stack.product_url, stack.order_url)


async def test_health_reports_every_dependency_up(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await health_is_green(client, stack.product_url, stack.order_url)


async def test_product_is_cached_under_product_id_in_redis(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Cached", 5, 3)
        assert (
            await client.get(f"{stack.product_url}/products/{product['id']}")
        ).status_code == 200
    redis = aioredis.from_url(stack.sandbox.redis_url)
    try:
        assert await redis.get(f"product:{product['id']}") is not None
    finally:
        await redis.aclose()


async def test_cache_warmup_needs_the_admin_token(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Warm", 5, 3)
        url = f"{stack.order_url}/admin/cache/warmup"
        body = {"product_ids": [product["id"], 999_999]}
        assert (await client.post(url, json=body)).status_code == 401
        wrong = await client.post(url, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        ok = await client.post(
            url, json=body, headers={"Authorization": f"Bearer {stack.admin_token}"}
        )
        assert ok.status_code == 200
        assert ok.json() == {"cached": [product["id"]], "not_found": [999_999]}


async def test_deleted_product_takes_no_more_orders(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        product = await create_product(client, stack.product_url, "Discontinued", 5, 10)
        deleted = await client.delete(f"{stack.product_url}/products/{product['id']}")
        assert deleted.status_code == 204
        assert (
            await client.get(f"{stack.product_url}/products/{product['id']}")
        ).status_code == 404
        refused = await client.post(
            f"{stack.order_url}/orders", json={"product_id": product["id"], "total_price": 5}
        )
        assert refused.status_code == 400 and refused.json()["code"] == "PRODUCT_NOT_FOUND"


async def test_order_queries_follow_the_links(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await order_queries_flow(client, stack.product_url, stack.order_url)

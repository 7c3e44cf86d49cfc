"""Concurrent lookups of one product that the cache does not answer share one request to
the product service (a service starting under load knows no epoch yet: every order's
lookup went there until the first answer came back). An httpx MockTransport plays the
product service, holding each answer until the test lets it go."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.orders.catalog import HttpProductCatalog
from orderstack.orders.domain import CatalogUnavailable


class HeldProductService:
    """Answers once ``release`` is set: 200 for product 1, 404 for others, 500 for all
    while ``failing``; counts the requests per path."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.failing = False
        self.asked: dict[str, int] = {}
        self.arrived = asyncio.Condition()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        async with self.arrived:
            self.asked[request.url.path] = self.asked.get(request.url.path, 0) + 1
            self.arrived.notify_all()
        await self.release.wait()
        if self.failing:
            return httpx.Response(500, json={"statusCode": 500})
        if request.url.path == "/products/1":
            return httpx.Response(200, json={"id": 1}, headers={"X-Database-Epoch": "e1"})
        return httpx.Response(404, json={"statusCode": 404})


@pytest.fixture
def products() -> HeldProductService:
    return HeldProductService()


@pytest.fixture
async def catalog(products: HeldProductService) -> AsyncIterator[HttpProductCatalog]:
    # No known epoch: no cache entry is trusted, every lookup is a miss.
    catalog = HttpProductCatalog(
        InProcessProductCache(),
        ["http://products:3000"],
        retries=1,
        transport=httpx.MockTransport(products),
        sleep=lambda _: asyncio.sleep(0),
    )
    yield catalog
    await catalog.close()


async def _until_asked(products: HeldProductService, count: int) -> None:
    async with products.arrived:
        await products.arrived.wait_for(lambda: sum(products.asked.values()) >= count)


async def test_concurrent_misses_of_one_product_share_one_request(
    catalog: HttpProductCatalog, products: HeldProductService
) -> None:
    lookups = [asyncio.create_task(catalog.product_exists(1)) for _ in range(50)]
    lookups += [asyncio.create_task(catalog.product_exists(2)) for _ in range(50)]
    await _until_asked(products, 2)
    products.release.set()

    found = await asyncio.gather(*lookups)

    assert found == [True] * 50 + [False] * 50
    assert products.asked == {"/products/1": 1, "/products/2": 1}


async def test_a_lookup_after_the_answer_asks_again(
    catalog: HttpProductCatalog, products: HeldProductService
) -> None:
    """Sharing lasts while the request is in flight: a later miss is a request of its own."""
    products.release.set()
    assert await catalog.product_exists(2) is False
    assert await catalog.product_exists(2) is False
    assert products.asked == {"/products/2": 2}


async def test_a_failed_request_fails_every_lookup_that_shared_it(
    catalog: HttpProductCatalog, products: HeldProductService
) -> None:
    products.failing = True
    lookups = [asyncio.create_task(catalog.product_exists(1)) for _ in range(10)]
    await _until_asked(products, 1)
    products.release.set()

    outcomes = await asyncio.gather(*lookups, return_exceptions=True)

    assert all(isinstance(o, CatalogUnavailable) for o in outcomes)
    assert products.asked == {"/products/1": 2}  # the one lookup's attempt and its retry


async def test_a_caller_giving_up_leaves_the_request_to_the_others(
    catalog: HttpProductCatalog, products: HeldProductService
) -> None:
    first = asyncio.create_task(catalog.product_exists(1))
    await _until_asked(products, 1)
    second = asyncio.create_task(catalog.product_exists(1))
    await asyncio.sleep(0)
    first.cancel()  # its deadline passed, or its client went away
    with pytest.raises(asyncio.CancelledError):
        await first
    products.release.set()

    assert await second is True
    assert products.asked == {"/products/1": 1}

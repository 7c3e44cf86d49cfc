"""How the product client retries: Retry-After honoured within a budget, OVERLOADED never
retried, jittered backoff. An httpx MockTransport plays the product service."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from orderstack.cache.inprocess import InProcessProductCache
from orderstack.orders.catalog import HttpProductCatalog
from orderstack.orders.domain import CatalogUnavailable

Answer = httpx.Response | Exception


class ProductService:
    """Gives the queued answers in turn, then 200; records each request."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return httpx.Response(200, json={"id": 1})


def overloaded(body: dict[str, object] | None = None) -> httpx.Response:
    """The load-shedding answer of web/limits.py."""
    return httpx.Response(
        503,
        json=body or {"error": "too many requests in flight; retry", "code": "OVERLOADED"},
        headers={"Retry-After": "1"},
    )


def unavailable(retry_after: str | None = None, status: int = 503) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"code": "DATABASE_UNAVAILABLE"}, headers=headers)


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def products() -> ProductService:
    return ProductService()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


CatalogFactory = Callable[..., HttpProductCatalog]


@pytest.fixture
async def make_catalog(products: ProductService, sleeps: Sleeps) -> AsyncIterator[CatalogFactory]:
    made: list[HttpProductCatalog] = []

    def make(*, retries: int = 2, retry_budget: float = 2.0, seed: int = 7) -> HttpProductCatalog:
        catalog = HttpProductCatalog(
            InProcessProductCache(),
            ["http://products:3000"],
            retries=retries,
            retry_budget=retry_budget,
            transport=httpx.MockTransport(products),
            sleep=sleeps,
            rng=random.Random(seed),
        )
        made.append(catalog)
        return catalog

    yield make
    for catalog in made:
        await catalog.close()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="order-service shape"),
        pytest.param(
            {
                "statusCode": 503,
                "message": "too many",
                "error": "Service Unavailable",
                "code": "OVERLOADED",
            },
            id="nest shape with a code",
        ),
    ],
)
async def test_overloaded_is_answered_at_once_without_a_retry(
    make_catalog: CatalogFactory,
    products: ProductService,
    sleeps: Sleeps,
    body: dict[str, object] | None,
) -> None:
    products.answers = [overloaded(body)]

    with pytest.raises(CatalogUnavailable, match="OVERLOADED"):
        await make_catalog().product_exists(1)

    assert products.requests == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [503, 429])
async def test_retry_after_is_waited_when_it_fits_the_budget(
    make_catalog: CatalogFactory, products: ProductService, sleeps: Sleeps, status: int
) -> None:
    products.answers = [unavailable("1", status)]

    assert await make_catalog(retry_budget=1.5).product_exists(1) is True

    assert products.requests == 2
    assert sleeps == [1.0]


async def test_retry_after_beyond_the_budget_fails_at_once(
    make_catalog: CatalogFactory, products: ProductService, sleeps: Sleeps
) -> None:
    products.answers = [unavailable("5")]

    with pytest.raises(CatalogUnavailable, match="Retry-After"):
        await make_catalog(retry_budget=2.0).product_exists(1)

    assert products.requests == 1
    assert sleeps == []


async def test_retry_after_as_an_http_date_is_honoured(
    make_catalog: CatalogFactory, products: ProductService, sleeps: Sleeps
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=2)
    products.answers = [unavailable(format_datetime(when, usegmt=True))]

    assert await make_catalog(retry_budget=3.0).product_exists(1) is True

    [waited] = sleeps
    assert 0 < waited <= 2.0


async def test_waits_never_exceed_the_budget_in_total(
    make_catalog: CatalogFactory, products: ProductService, sleeps: Sleeps
) -> None:
    products.answers = [unavailable("1"), unavailable("1"), unavailable("1")]

    with pytest.raises(CatalogUnavailable):
        await make_catalog(retries=3, retry_budget=2.5).product_exists(1)

    assert sleeps == [1.0, 1.0]  # the third Retry-After did not fit in the 0.5 s left
    assert products.requests == 3


async def test_backoff_has_full_jitter_below_a_growing_ceiling(
    make_catalog: CatalogFactory, products: ProductService, sleeps: Sleeps
) -> None:
    catalog = make_catalog(retries=3, retry_budget=10.0)
    per_lookup: list[list[float]] = []
    for _ in range(20):
        products.answers = [httpx.ConnectError("refused")] * 3
        sleeps.clear()
        assert await catalog.product_exists(1) is True
        per_lookup.append(list(sleeps))

    for waits in per_lookup:
        assert [w <= ceiling for w, ceiling in zip(waits, (0.05, 0.1, 0.2), strict=True)] == [
            True
        ] * 3
    firsts = [w[0] for w in per_lookup]
    assert len(set(firsts)) == len(firsts)  # spread out, not one synchronised delay
    assert min(firsts) < 0.025 < max(firsts)  # anywhere from 0 to the ceiling


async def test_a_503_without_retry_after_is_retried_with_backoff(
    make_catalog: CatalogFactory, products: ProductService, sleeps: Sleeps
) -> None:
    products.answers = [unavailable()]

    assert await make_catalog().product_exists(1) is True

    assert products.requests == 2
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.05
